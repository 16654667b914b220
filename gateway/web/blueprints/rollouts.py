"""Ops routes for progressive rollouts: start one, read its state and decisions, pause, resume
or abort it. The decisions themselves are taken by the rollout controller, not here."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from gateway.web.current import services
from gateway.web.responses import json_response, read_json_object
from gateway.web.writes import announce_writes

bp = Blueprint("rollouts", __name__, url_prefix="/admin")
bp.after_request(announce_writes)


def _body() -> dict[str, Any]:
    return read_json_object(services().settings.max_body_bytes) if request.content_length else {}


@bp.get("/models/<name>/rollout")
def status(name: str) -> Any:
    return json_response(services().rollouts.status(name))


@bp.post("/models/<name>/rollout")
def start(name: str) -> Any:
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes)
    return json_response(svc.rollouts.start(name, body, g.actor), 201)


@bp.post("/models/<name>/rollout/pause")
def pause(name: str) -> Any:
    return json_response(services().rollouts.pause(name, g.actor, _body().get("reason")))


@bp.post("/models/<name>/rollout/resume")
def resume(name: str) -> Any:
    return json_response(services().rollouts.resume(name, g.actor, _body().get("reason")))


@bp.post("/models/<name>/rollout/abort")
def abort(name: str) -> Any:
    return json_response(services().rollouts.abort(name, g.actor, _body().get("reason")))

"""Liveness and readiness for orchestrators: no token, no body to parse."""

from __future__ import annotations

import os
from typing import Any

import redis
from flask import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.web.app import services
from gateway.web.responses import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return json_response({"status": "ok", "pid": os.getpid()})


@bp.get("/readyz")
def readyz() -> Any:
    """Ready when the registry and Redis answer and every routed version is loaded here."""
    svc = services()
    checks: dict[str, Any] = {}
    try:
        with svc.db.read() as session:
            session.execute(text("SELECT 1"))
        checks["registry"] = "ok"
    except SQLAlchemyError as exc:
        checks["registry"] = f"unreachable: {exc.__class__.__name__}"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {exc.__class__.__name__}"
    versions: dict[str, str] = {}
    snapshot = svc.catalog.snapshot
    policies = svc.policies.all()
    for name, entry in sorted(snapshot.models.items()):
        policy = policies.get(name)
        routed = [v for v, w in policy.live] if policy else (
            [entry.latest_live.version] if entry.latest_live else [])
        for number in routed:
            version = entry.versions.get(number)
            if version is None:
                versions[f"{name}:{number}"] = "unknown to this worker yet"
            elif svc.runtime.is_loaded(version.sha256):
                versions[f"{name}:{number}"] = "ok"
            elif version.sha256 in svc.runtime.broken:
                versions[f"{name}:{number}"] = f"broken: {svc.runtime.broken[version.sha256][1]}"
            else:
                versions[f"{name}:{number}"] = "loading"
    checks["versions"] = versions
    # the contract: at least one routed version of each model ready in this worker
    by_model: dict[str, bool] = {}
    for key, state in versions.items():
        model = key.split(":", 1)[0]
        by_model[model] = by_model.get(model, False) or state == "ok"
    ready = (checks["registry"] == "ok" and checks["redis"] == "ok"
             and all(by_model.values()))
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

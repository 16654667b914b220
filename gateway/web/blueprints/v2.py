"""The Open Inference Protocol (KServe V2 / Triton HTTP) over the same data plane.

Errors on these routes are `{"error": "message"}` as the protocol says (see `gateway.web.app`).
Bodies are read raw whatever the Content-Type, because `tritonclient.http` sends binary tensors
without one.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from flask import Blueprint, Response, current_app, request

from gateway.serving import metadata
from gateway.serving.entry import Route
from gateway.web.blueprints.predict import respond
from gateway.web.current import services
from gateway.web.responses import json_response

bp = Blueprint("v2", __name__, url_prefix="/v2")
health_bp = Blueprint("v2_health", __name__, url_prefix="/v2/health")

EXTENSIONS = ["binary_tensor_data"]


def _server_version() -> str:
    try:
        return package_version("model-gateway")
    except PackageNotFoundError:
        return "0"


@health_bp.get("/live")
def live() -> Any:
    return json_response({"live": True})


@health_bp.get("/ready")
def ready() -> Any:
    """The same readiness as `/readyz` (`gateway.serving.readiness`), in the protocol's shape."""
    ok = services().readiness.worker().ready
    return json_response({"ready": ok}, 200 if ok else 503)


@bp.get("")
def server_metadata() -> Any:
    return json_response(
        {"name": "model-gateway", "version": _server_version(), "extensions": EXTENSIONS}
    )


@bp.get("/models/<name>")
def model_metadata(name: str) -> Any:
    svc = services()
    return json_response(metadata.model_metadata(svc.catalog, svc.dataplane, name, None))


@bp.get("/models/<name>/versions/<ref>")
def version_metadata(name: str, ref: str) -> Any:
    svc = services()
    return json_response(metadata.model_metadata(svc.catalog, svc.dataplane, name, ref))


def _readiness(name: str, ref: str | None) -> Any:
    state = services().readiness.version(name, ref)
    body: dict[str, Any] = {"name": name, "version": str(state.version.version),
                            "ready": state.ready}
    if state.error is not None:
        body["error"] = state.error
    return json_response(body, 200 if state.ready else 503)


@bp.get("/models/<name>/ready")
def model_ready(name: str) -> Any:
    return _readiness(name, None)


@bp.get("/models/<name>/versions/<ref>/ready")
def version_ready(name: str, ref: str) -> Any:
    return _readiness(name, ref)


def _infer(name: str, ref: str | None) -> Response:
    """Answered by `gateway.serving.entry` before Flask sees the request (see predict.py)."""
    return respond(current_app.extensions["mgw_entry"].answer(Route(True, name, ref),
                                                              request.environ))


@bp.post("/models/<name>/infer")
def infer(name: str) -> Response:
    return _infer(name, None)


@bp.post("/models/<name>/versions/<ref>/infer")
def infer_version(name: str, ref: str) -> Response:
    return _infer(name, ref)

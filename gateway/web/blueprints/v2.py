"""The Open Inference Protocol (KServe V2 / Triton HTTP) over the same data plane.

Errors on these routes are `{"error": "message"}` as the protocol says (see `gateway.web.app`).
Bodies are read raw whatever the Content-Type, because `tritonclient.http` sends binary tensors
without one.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from flask import Blueprint, Response, request

from gateway.serving import metadata
from gateway.serving.catalog import VersionInfo
from gateway.serving.codecs.v2 import decode_v2_request, encode_v2_response
from gateway.web.current import services
from gateway.web.inference import finish_call, run_call, start_call
from gateway.web.responses import json_response, read_body
from registry.errors import InvalidInput
from registry.names import ascii_number

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
    svc = services()
    call = start_call(svc)
    body = read_body(svc.settings.max_body_bytes)
    raw_length = request.headers.get("Inference-Header-Content-Length")
    header_length = None
    if raw_length is not None:
        header_length = ascii_number(raw_length.strip(), 18)  # no longer than a body size
        if header_length is None:
            raise InvalidInput("Inference-Header-Content-Length must be a non-negative integer")
    parsed: dict[str, Any] = {}

    def decode(version: VersionInfo) -> tuple[dict[str, Any], list[str] | None]:
        req = decode_v2_request(body, header_length, version.inputs, version.output_names,
                                svc.limits)
        parsed["request"] = req
        wanted = [o.name for o in req.outputs] if req.outputs is not None else None
        return req.inputs, wanted

    result = run_call(svc, call, name, ref, decode)
    req = parsed["request"]
    payload, headers = encode_v2_response(name, result.version, req.id, result.outputs,
                                          req.outputs, req.binary_output_default)
    return finish_call(Response(payload, status=200, headers=headers), result)


@bp.post("/models/<name>/infer")
def infer(name: str) -> Response:
    return _infer(name, None)


@bp.post("/models/<name>/versions/<ref>/infer")
def infer_version(name: str, ref: str) -> Response:
    return _infer(name, ref)

"""`POST /predict`: the gateway's own JSON inference route, for applications."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from gateway.serving.codecs import decode_json_inputs, outputs_for_json
from gateway.serving.dataplane import request_id_from
from gateway.web.current import services
from gateway.web.responses import json_response, read_json_object
from registry.errors import InvalidInput

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> Any:
    svc = services()
    environ = request.environ  # header reads straight from the WSGI environ: this is the hot path
    caller_id = environ.get("HTTP_X_REQUEST_ID")
    g.request_id = request_id = request_id_from(caller_id, svc.dataplane.fresh_ids)
    body = read_json_object(svc.settings.max_body_bytes)
    unknown = set(body) - {"model", "inputs"}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}; send 'model' and 'inputs'")
    header_model = environ.get("HTTP_X_MODEL")
    model = body.get("model", header_model)
    if header_model is not None and header_model != model:
        raise InvalidInput("the X-Model header and the body's 'model' name different models")
    if not isinstance(model, str):
        raise InvalidInput("name the model in 'model' (a string) or in the X-Model header")
    if "inputs" not in body:
        raise InvalidInput("the body has no 'inputs'")
    inputs = body["inputs"]
    result = svc.dataplane.infer(
        model,
        environ.get("HTTP_X_MODEL_VERSION"),
        lambda version: (decode_json_inputs(inputs, version.inputs, svc.limits), None),
        request_id,
        routing_key(),
        caller_id=caller_id is not None,
        caller=g.get("caller"),
    )
    response = json_response(
        {"request_id": request_id, "model": model, "version": result.version,
         "outputs": outputs_for_json(result.outputs)},
        headers={"X-Model-Version": str(result.version), "X-Request-Id": request_id},
    )
    response.call_on_close(result.run_deferred)
    return response


def routing_key() -> str | None:
    """`X-Routing-Key`, bounded so a huge header cannot cost hashing time."""
    key: str | None = request.environ.get("HTTP_X_ROUTING_KEY")
    if key is not None and not 1 <= len(key) <= 256:
        raise InvalidInput("X-Routing-Key must be 1 to 256 characters")
    return key

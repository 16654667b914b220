"""`POST /predict`: the gateway's own JSON inference route, for applications."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from gateway.serving.codecs.predict_json import decode_json_inputs, outputs_for_json
from gateway.web.current import services
from gateway.web.inference import finish_call, run_call, start_call
from gateway.web.responses import json_response, read_json_object
from registry.errors import InvalidInput

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict() -> Any:
    svc = services()
    call = start_call(svc)
    environ = request.environ  # header reads straight from the WSGI environ: this is the hot path
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
    result = run_call(
        svc, call, model, environ.get("HTTP_X_MODEL_VERSION"),
        lambda version: (decode_json_inputs(inputs, version.inputs, svc.limits), None))
    return finish_call(json_response(
        {"request_id": result.request_id, "model": model, "version": result.version,
         "outputs": outputs_for_json(result.outputs)}), result)

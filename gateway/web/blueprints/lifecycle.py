"""Ops routes for the model lifecycle over HTTP: evaluations, the gate and quantization, so a
CI job with an ops token can do what `gateway models evaluate|gate|quantize` do locally, with
the same validation and audit (the same functions run behind both).

An evaluation runs inside the request: the dataset is bounded by `GATEWAY_MAX_DATASET_BYTES`
(16 MiB by default), which keeps it well inside the worker's timeout for models that answer a
row in milliseconds. A larger dataset, or a slower model, is evaluated with the local command.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from gateway.web.current import services
from gateway.web.responses import json_response, read_json_object
from gateway.web.writes import announce_writes
from registry import evaluations, service
from registry.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from registry.names import check_model_name, check_reason

bp = Blueprint("lifecycle", __name__, url_prefix="/admin")
bp.after_request(announce_writes)  # a quantized copy is a new version every worker must see

MULTIPART_OVERHEAD = 64 * 1024
MAX_GATE_BODY = 64 * 1024


def _dataset_upload(limit: int) -> tuple[str, bytes]:
    """The `dataset` part of a multipart body: (file name, bytes); 413 beyond `limit`."""
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"upload is {request.content_length} bytes; the dataset limit "
                              f"(GATEWAY_MAX_DATASET_BYTES) is {limit}")
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data with the dataset (.npz with X and "
                                   "y, or .csv with a label column) in 'dataset'")
    request.max_content_length = limit + MULTIPART_OVERHEAD
    request.max_form_memory_size = limit + MULTIPART_OVERHEAD
    upload = request.files.get("dataset")
    if upload is None:
        raise InvalidInput("the multipart body has no 'dataset' part")
    raw = upload.stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the dataset is over {limit} bytes (GATEWAY_MAX_DATASET_BYTES)")
    return (upload.filename or "dataset")[:200], raw


@bp.post("/models/<name>/versions/<ref>/evaluations")
def evaluate(name: str, ref: str) -> Any:
    """Run the version over the uploaded dataset and record the evaluation; 201 with it and
    the gate's verdict. A dataset that does not fit the version is 400 and stores nothing."""
    from gateway.lifecycle.datasets import parse_dataset
    from gateway.lifecycle.evaluation import evaluate_and_gate, single_input_name

    svc = services()
    check_model_name(name)
    record = service.get_version(svc.db, name, ref)
    limit = svc.settings.max_dataset_bytes
    filename, raw = _dataset_upload(limit)
    dataset = parse_dataset(filename, raw, limit, single_input_name(record))
    result = evaluate_and_gate(svc.db, svc.store, name, record["version"], dataset, g.actor)
    return json_response(result, 201)


@bp.get("/models/<name>/versions/<ref>/evaluations")
def list_evaluations(name: str, ref: str) -> Any:
    """The version's evaluations, newest first."""
    return json_response({"model": name, "evaluations":
                          evaluations.list_evaluations(services().db, name, ref)})


@bp.get("/models/<name>/gate")
def get_gate(name: str) -> Any:
    from gateway.lifecycle.gate import gate_status

    check_model_name(name)
    return json_response(gate_status(services().db, name))


@bp.put("/models/<name>/gate")
def put_gate(name: str) -> Any:
    """Replace the gate: `{"rules": [...], "reason": "..."}`; `"rules": []` or null removes
    it. A bad rule is 400 and changes nothing."""
    from gateway.lifecycle.gate import gate_status, normalise_rules

    check_model_name(name)
    body = read_json_object(MAX_GATE_BODY)
    if "rules" not in body:
        raise InvalidInput('send {"rules": ["accuracy >= 0.95", ...]} ([] or null removes it)')
    unknown = sorted(set(body) - {"rules", "reason"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; a gate body has rules and reason")
    reason = check_reason(body.get("reason"))
    rules = None if body["rules"] in (None, []) else normalise_rules(body["rules"])
    db = services().db
    evaluations.set_gate(db, name, rules, g.actor, reason)
    return json_response(gate_status(db, name))


@bp.post("/models/<name>/versions/<ref>/quantize")
def quantize(name: str, ref: str) -> Any:
    """Register the INT8 copy of the version (its parent), evaluated beside it on the parent's
    latest evaluation dataset; 201 with the new version's record plus both evaluations."""
    from gateway.lifecycle.quantize import quantize as quantize_version
    from gateway.lifecycle.quantize import quantized_view

    svc = services()
    check_model_name(name)
    body = read_json_object(MAX_GATE_BODY) if request.content_length else {}
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; a quantize body has only reason")
    check_reason(body.get("reason"))
    result = quantize_version(svc.db, svc.store, name, ref, g.actor,
                              max_bytes=svc.settings.max_model_bytes)
    view = quantized_view(result)
    return json_response(view, 201,
                         {"Location": f"/admin/models/{name}/versions/{view['version']}"})

"""The OpenAPI 3 description of the whole public HTTP API (`GET /openapi.json`).

Written by hand next to the code rather than generated from it, because most of what a client
needs (which body each route parses, which headers it reads, which errors it answers) lives in
the handlers' code, not in Flask's url map. `tests/test_openapi.py` keeps the two from
drifting: every route of the app must be documented here with its methods and auth, and every
documented operation must exist in the app; schemathesis then fuzzes a live gateway with it.

Schemas say what the handlers accept, no looser: a value outside them is refused with a 4xx by
the gateway, so property-based tests can rely on them (`negative_data_rejection`).
`build_document()` returns a new tree each call; the blueprint builds it once per app.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.serving import dataplane
from registry import names

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"

# the patterns the code enforces, anchored as JSON Schema needs
MODEL_NAME = f"^{names.MODEL_NAME.pattern}$"
ALIAS_NAME = f"^{names.ALIAS_NAME.pattern}$"
REQUEST_ID = f"^{dataplane.REQUEST_ID.pattern}$"
V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                "INT64", "FP16", "FP32", "FP64", "BYTES"]

STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 303: "See Other: redirected",
    400: "Invalid input (`invalid_input`)", 401: "No valid token (`unauthorized`)",
    403: "The token's role may not use this route (`forbidden`)",
    404: "Unknown model, version or request id", 409: "Conflict with the current state",
    413: "The body is larger than the limit (`payload_too_large`)",
    415: "Unsupported media type", 503: "Unavailable: nothing can serve it right now",
    507: "The model store's disk is full (`insufficient_storage`); nothing was stored",
}
# the roles of gateway.web.auth, in the document so that clients see which token a route needs
ROLE_TEXT = {"app": "an app (or ops) token", "analyst": "an analyst (or ops) token",
             "feedback": "a feedback or ops token, or the app token that made the request",
             "ops": "an ops token"}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (),
         closed: bool = False, **extra: Any) -> dict[str, Any]:
    """An object schema; `closed` for bodies whose unknown fields the gateway refuses."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
BOOL: dict[str, Any] = {"type": "boolean"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
REASON: dict[str, Any] = {"type": "string", "maxLength": 2000, "nullable": True,
                          "description": "Why: kept in the audit trail."}


# ------------------------------------------------------------------------------ schemas


def _tensor_schemas() -> dict[str, Any]:
    shape = {"type": "array", "items": {"type": "integer", "minimum": -1}}
    return {
        "TensorMetadata": _obj({"name": STR, "datatype": STR, "shape": shape},
                               ("name", "datatype", "shape")),
        "V2InferInput": _obj(
            {"name": STR, "shape": {"type": "array", "items": {"type": "integer",
                                                                "minimum": 0}},
             "datatype": {"type": "string", "enum": V2_DATATYPES},
             "data": {"type": "array", "description": "Flat row-major values (nested lists "
                                                      "are flattened)."},
             "parameters": _obj({"binary_data_size": {"type": "integer", "minimum": 0}})},
            ("name", "shape", "datatype")),
        "V2RequestedOutput": _obj(
            {"name": STR, "parameters": _obj({"binary_data": BOOL})}, ("name",)),
        "V2InferRequest": _obj(
            {"id": {"type": "string", "maxLength": 128},
             "parameters": _obj({"binary_data_output": BOOL}),
             "inputs": {"type": "array", "items": _schema("V2InferInput")},
             "outputs": {"type": "array", "items": _schema("V2RequestedOutput")}},
            ("inputs",), example={"id": "r1", "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}),
        "V2InferOutput": _obj(
            {"name": STR, "datatype": STR, "shape": {"type": "array", "items": INT},
             "data": {"type": "array"},
             "parameters": _obj({"binary_data_size": INT})}, ("name", "datatype", "shape")),
        "V2InferResponse": _obj(
            {"model_name": STR, "model_version": STR, "id": STR,
             "outputs": {"type": "array", "items": _schema("V2InferOutput")}},
            ("model_name", "model_version", "outputs")),
        "V2ModelMetadata": _obj(
            {"name": STR, "versions": {"type": "array", "items": STR},
             "platform": {"type": "string", "enum": ["onnxruntime_onnx"]},
             "inputs": {"type": "array", "items": _schema("TensorMetadata")},
             "outputs": {"type": "array", "items": _schema("TensorMetadata")}},
            ("name", "versions", "platform", "inputs", "outputs")),
        "V2Readiness": _obj({"name": STR, "version": STR, "ready": BOOL, "error": STR},
                            ("name", "version", "ready")),
    }


def _registry_schemas() -> dict[str, Any]:
    dataset = _obj({"name": {"type": "string", "maxLength": 256},
                    "version": {"type": "string", "maxLength": 256},
                    "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}}, closed=True)
    version_record = _obj(
        {"model": STR, "version": INT, "sha256": STR, "size_bytes": INT,
         "inputs": {"type": "array", "items": _schema("TensorMetadata")},
         "outputs": {"type": "array", "items": _schema("TensorMetadata")},
         "opset": _nullable(INT), "stage": STR, "created_at": STR, "created_by": STR,
         "description": _nullable(STR), "dataset": _nullable(ANY_OBJECT),
         "params": _nullable(ANY_OBJECT), "metrics": _nullable(ANY_OBJECT),
         "parent_version": _nullable(INT), "aliases": {"type": "array", "items": STR},
         "archived_at": _nullable(STR), "archived_reason": _nullable(STR),
         "lineage": _obj({"parent_version": _nullable(INT),
                          "ancestors": {"type": "array", "items": INT},
                          "children": {"type": "array", "items": INT}}),
         "evaluation": _nullable({**ANY_OBJECT, "description": "The latest evaluation (GET "
                                  "of one version only)."}),
         "gate": _nullable({**ANY_OBJECT, "description": "The model's gate on this version: "
                            "passed, failures (null without a gate)."}),
         "vs_parent": _nullable({**ANY_OBJECT, "description": "size_ratio, "
                                 "latency_p50_ratio, accuracy_delta against the parent on "
                                 "the same dataset."})},
        ("model", "version", "sha256", "size_bytes", "inputs", "outputs", "stage",
         "created_at"))
    return {
        "VersionMetadata": _obj(
            {"description": {"type": "string", "maxLength": 10000}, "dataset": dataset,
             "params": ANY_OBJECT,
             "metrics": {"type": "object", "additionalProperties": NUM},
             "parent_version": {"type": "integer", "minimum": 1},
             "aliases": {"type": "array", "items": {"type": "string",
                                                    "pattern": ALIAS_NAME}}},
            closed=True, description="Registration metadata; every key is optional."),
        "VersionRecord": version_record,
        "ModelRecord": _obj(
            {"model": STR, "created_at": STR,
             "versions": {"type": "array", "items": _schema("VersionRecord")},
             "aliases": {"type": "object", "additionalProperties": INT},
             "batching": _nullable(ANY_OBJECT), "traffic": _schema("TrafficPolicy")},
            ("model", "versions", "aliases")),
        "TrafficPolicy": _obj(
            {"model": STR, "revision": INT,
             "weights": {"type": "object", "additionalProperties": INT},
             "shadow": {"type": "object", "additionalProperties": NUM},
             "updated_at": _nullable(STR), "updated_by": _nullable(STR),
             "reason": _nullable(STR)},
            ("model", "revision", "weights", "shadow")),
        "TrafficPolicyBody": _obj(
            {"weights": {"type": "object", "minProperties": 1,
                         "additionalProperties": {"type": "integer", "minimum": 0},
                         "description": "version (number or alias) -> weight; not all zero"},
             "shadow": {"type": "object",
                        "additionalProperties": {"type": "number", "minimum": 0,
                                                 "maximum": 100},
                        "description": "version -> percent of routed requests copied"},
             "reason": REASON,
             "force": {"type": "boolean", "default": False,
                       "description": "Give weight to versions that fail the model's "
                                      "evaluation gate; needs a non-empty reason and is "
                                      "audited (traffic.gate_override)."}},
            ("weights",), closed=True,
            description="The whole new policy: a missing shadow means no shadow. Every version "
                        "given weight must pass the model's evaluation gate (400 naming the "
                        "failed rule otherwise) unless force is true.",
            example={"weights": {"1": 90, "2": 10}, "shadow": {"3": 100},
                     "reason": "canary 10%"}),
        "Batching": _obj({"model": STR, "enabled": BOOL, "max_batch": _nullable(INT),
                          "max_wait_us": _nullable(INT)}, ("model", "enabled")),
        "BatchingBody": {"oneOf": [
            _obj({"max_batch": {"type": "integer", "minimum": 1, "maximum": 4096},
                  "max_wait_us": {"type": "integer", "minimum": 0, "maximum": 100000},
                  "enabled": {"type": "boolean", "enum": [True]}, "reason": REASON},
                 ("max_batch",), closed=True),
            _obj({"enabled": {"type": "boolean", "enum": [False]}, "reason": REASON},
                 ("enabled",), closed=True),
        ]},
        "AuditEntry": _obj({"id": INT, "ts": STR, "actor": STR, "action": STR,
                            "model": _nullable(STR), "version": _nullable(INT),
                            "reason": _nullable(STR), "detail": _nullable(ANY_OBJECT)},
                           ("id", "ts", "actor", "action")),
    }


def _schemas() -> dict[str, Any]:
    version_ref = {"type": "string", "pattern": f"^([0-9]{{1,10}}|{names.ALIAS_NAME.pattern})$",
                   "description": "A version number (1, 2, ...) or an alias."}
    feedback_item = _obj(
        {"request_id": {"type": "string", "pattern": REQUEST_ID},
         "label": {"type": "integer", "description": "The true class label."},
         "reward": {"type": "number"},
         "model": {"type": "string", "pattern": MODEL_NAME,
                   "description": "Only needed when the id was served by several models."}},
        ("request_id",), closed=True,
        anyOf=[{"required": ["label"]}, {"required": ["reward"]}],
        example={"request_id": "b3f1c0de", "label": 3})
    return {
        "Error": _obj(
            {"error": _obj({"code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                            "message": {"type": "string", "minLength": 1}},
                           ("code", "message"), closed=True)},
            ("error",), closed=True),
        "V2Error": _obj({"error": {"type": "string", "minLength": 1}}, ("error",),
                        closed=True),
        "ModelName": {"type": "string", "pattern": MODEL_NAME},
        "VersionRef": version_ref,
        "PredictRequest": _obj(
            {"model": {"type": "string", "pattern": MODEL_NAME,
                       "description": "Or name the model in the X-Model header."},
             "inputs": {"oneOf": [
                 {"type": "object", "additionalProperties": {"type": "array"},
                  "description": "input name -> nested list of numbers"},
                 {"type": "array", "description": "the rows, for a model with one input"}]}},
            ("inputs",), closed=True,
            example={"model": "digits", "inputs": {"input": [[0.0] * 64]}}),
        "PredictResponse": _obj(
            {"request_id": STR, "model": STR, "version": INT,
             "outputs": {"type": "object", "additionalProperties": {"type": "array"}}},
            ("request_id", "model", "version", "outputs")),
        "FeedbackItem": feedback_item,
        # each item is meant to be a FeedbackItem, but one that is not gets its own 400 in
        # the batch's results rather than failing the batch, so the schema cannot say so
        "FeedbackBatch": _obj(
            {"items": {"type": "array", "minItems": 1, "maxItems": 1000,
                       "items": {"description": "A FeedbackItem; an invalid one gets status "
                                                "400 in its result."}}},
            ("items",), closed=True),
        "FeedbackResult": _obj({"request_id": STR,
                                "status": {"type": "string", "enum": ["recorded",
                                                                      "unchanged"]}},
                               ("request_id", "status")),
        "FeedbackBatchResult": _obj({"items": {"type": "array", "items": _obj(
            {"request_id": _nullable(STR), "status": {"type": "integer",
                                                      "enum": [202, 400, 404, 409]},
             "error": _obj({"code": STR, "message": STR})}, ("status",))}}, ("items",)),
        "Readiness": _obj({"ready": BOOL, "checks": ANY_OBJECT}, ("ready", "checks")),
        **_tensor_schemas(),
        **_registry_schemas(),
    }


# ------------------------------------------------------------------------------ parameters


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool = False, example: Any = None, empty_is_absent: bool = False
           ) -> dict[str, Any]:
    """`empty_is_absent`: the handler reads `?x=` as if `x` were not sent."""
    param = {"name": name, "in": where, "required": required or where == "path",
             "description": description, "schema": schema}
    if example is not None:
        param["example"] = example
    if empty_is_absent:
        param["allowEmptyValue"] = True
    return param


def _parameters() -> dict[str, Any]:
    # not `format: date-time`: the gateway takes every ISO 8601 form Python reads, dates too
    iso = {"type": "string", "example": "2026-01-31T12:00:00Z"}
    return {
        "name": _param("name", "path", _schema("ModelName"), "The model's name.",
                       example="digits"),
        "ref": _param("ref", "path", _schema("VersionRef"), "A version number or an alias.",
                      example="2"),
        "alias": _param("alias", "path", {"type": "string", "pattern": ALIAS_NAME},
                        "An alias name (not a plain number).", example="champion"),
        "XModelVersion": _param("X-Model-Version", "header", _schema("VersionRef"),
                                "Pin this version (number or alias); weights are bypassed."),
        "XRoutingKey": _param("X-Routing-Key", "header",
                              {"type": "string", "minLength": 1, "maxLength": 256},
                              "Sticky routing: the same key gets the same version while the "
                              "policy is unchanged."),
        "XRequestId": _param("X-Request-Id", "header",
                             {"type": "string", "pattern": REQUEST_ID},
                             "The caller's id for this request, unique per model (a reused "
                             "id is 409); generated when absent."),
        "XModel": _param("X-Model", "header", _schema("ModelName"),
                         "The model, instead of the body's `model`."),
        "IfMatch": _param("If-Match", "header", {"type": "string", "pattern": r'^(W/)?"?[0-9]+"?$'},
                          "The policy revision this change is based on; a stale one is 409."),
        "since": _param("since", "query", iso, "Start of the window (ISO 8601, UTC).",
                        empty_is_absent=True),
        "until": _param("until", "query", iso, "End of the window (ISO 8601, UTC).",
                        empty_is_absent=True),
    }


def _p(name: str) -> dict[str, str]:
    return _ref("parameters", name)


# ------------------------------------------------------------------------------ responses


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _errors(*codes: int, v2: bool = False, html: bool = False) -> dict[str, Any]:
    """Error responses in the contract's shape (`V2Error` on /v2, HTML too for browsers)."""
    out: dict[str, Any] = {}
    for code in codes:
        content = _json(_schema("V2Error" if v2 else "Error"))
        if html:
            content[HTML] = {"schema": STR}
        out[str(code)] = {"description": STATUS_TEXT[code], "content": content}
    return out


def _ok(schema: dict[str, Any], status: int = 200, headers: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None, description: str | None = None
        ) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description or STATUS_TEXT[status],
                                "content": content or _json(schema)}
    if headers:
        response["headers"] = headers
    return {str(status): response}


def _served_headers() -> dict[str, Any]:
    return {"X-Model-Version": {"description": "The version that served.",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "X-Request-Id": {"description": "This request's id.",
                             "schema": {"type": "string", "pattern": REQUEST_ID}}}


ETAG = {"ETag": {"description": "The policy revision, for If-Match.", "schema": STR}}
BINARY_NOTE = ("The body is read raw whatever its Content-Type. With the binary tensor data "
               "extension, a JSON header of Inference-Header-Content-Length bytes is followed "
               "by the inputs' raw little-endian bytes.")
OPS_FORM_NOTE = "Changing traffic needs an ops token; an analyst gets 403."
REDIRECT = {"303": {"description": STATUS_TEXT[303],
                    "headers": {"Location": {"schema": STR}}}}


# ------------------------------------------------------------------------------ operations


def _op(op_id: str, tag: str, summary: str, responses: dict[str, Any], *,
        role: str | None, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, body_required: bool = True,
        note: str = "") -> dict[str, Any]:
    """One operation; `role` None is a public route (`security: []`). `x-required-role` is
    the role `gateway.web.auth` asks for (the tests compare the two)."""
    op: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary,
                          "responses": responses}
    if role is None:
        op["security"] = []
    else:
        op["x-required-role"] = role
    description = " ".join(filter(None, [f"Needs {ROLE_TEXT[role]}." if role else "", note]))
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": body}
    return op


def _inference_paths() -> dict[str, Any]:
    routed = [_p("XModelVersion"), _p("XRoutingKey"), _p("XRequestId")]
    served = _served_headers()
    v2_errors = (400, 401, 403, 404, 409, 413, 503)
    v2_body = {JSON: {"schema": _schema("V2InferRequest")},
               "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    binary_len = _param("Inference-Header-Content-Length", "header",
                        {"type": "string", "pattern": "^[0-9]+$"},
                        "Length of the JSON header when binary tensor data follows it.")
    v2_ok = _ok(_schema("V2InferResponse"), headers=served, content={
        JSON: {"schema": _schema("V2InferResponse")},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
    ready = {**_ok(_schema("V2Readiness")),
             "503": {"description": "Not ready", "content": _json(
                 {"oneOf": [_schema("V2Readiness"), _schema("V2Error")]})}}
    return {
        "/predict": {"post": _op(
            "predict", "inference", "Run a model (JSON); routed by the traffic policy",
            {**_ok(_schema("PredictResponse"), headers=served),
             **_errors(400, 401, 403, 404, 409, 413, 503)},
            role="app", params=[*routed, _p("XModel")],
            body=_json(_schema("PredictRequest")))},
        "/v2": {"get": _op(
            "v2_server_metadata", "v2", "Server metadata (Open Inference Protocol)",
            {**_ok(_obj({"name": STR, "version": STR,
                         "extensions": {"type": "array", "items": STR}},
                        ("name", "version", "extensions"))),
             **_errors(401, 403, v2=True)}, role="app")},
        "/v2/health/live": {"get": _op(
            "v2_live", "v2", "Liveness", _ok(_obj({"live": BOOL}, ("live",))), role=None)},
        "/v2/health/ready": {"get": _op(
            "v2_ready", "v2", "Readiness of the server",
            {**_ok(_obj({"ready": BOOL}, ("ready",))),
             "503": {"description": "Not ready",
                     "content": _json(_obj({"ready": BOOL}, ("ready",)))}}, role=None)},
        "/v2/models/{name}": {"get": _op(
            "v2_model_metadata", "v2", "Model metadata (the version the policy routes to)",
            {**_ok(_schema("V2ModelMetadata")), **_errors(400, 401, 403, 404, 503, v2=True)},
            role="app", params=[_p("name")])},
        "/v2/models/{name}/versions/{ref}": {"get": _op(
            "v2_version_metadata", "v2", "Metadata of one version",
            {**_ok(_schema("V2ModelMetadata")), **_errors(400, 401, 403, 404, v2=True)},
            role="app", params=[_p("name"), _p("ref")])},
        "/v2/models/{name}/ready": {"get": _op(
            "v2_model_ready", "v2", "Whether the routed version is loaded",
            {**ready, **_errors(400, 401, 403, 404, v2=True)}, role="app",
            params=[_p("name")])},
        "/v2/models/{name}/versions/{ref}/ready": {"get": _op(
            "v2_version_ready", "v2", "Whether this version is loaded",
            {**ready, **_errors(400, 401, 403, 404, v2=True)}, role="app",
            params=[_p("name"), _p("ref")])},
        "/v2/models/{name}/infer": {"post": _op(
            "v2_infer", "v2", "Inference, routed by the traffic policy",
            {**v2_ok, **_errors(*v2_errors, v2=True)}, role="app",
            params=[_p("name"), _p("XRoutingKey"), _p("XRequestId"), binary_len],
            body=v2_body, note=BINARY_NOTE)},
        "/v2/models/{name}/versions/{ref}/infer": {"post": _op(
            "v2_infer_version", "v2", "Inference pinned to one version",
            {**v2_ok, **_errors(*v2_errors, v2=True)}, role="app",
            params=[_p("name"), _p("ref"), _p("XRoutingKey"), _p("XRequestId"), binary_len],
            body=v2_body, note=BINARY_NOTE)},
        "/feedback": {"post": _op(
            "feedback", "feedback", "Report ground truth for a served request (or a batch)",
            {**_ok(_schema("FeedbackBatchResult"), description="The batch's per-item results"),
             **_ok(_schema("FeedbackResult"), 202),
             **_errors(400, 401, 403, 404, 409, 413)},
            role="feedback", body=_json(
                {"oneOf": [_schema("FeedbackItem"), _schema("FeedbackBatch")]}))},
    }


def _admin_paths() -> dict[str, Any]:
    name, ref = _p("name"), _p("ref")
    record = _schema("VersionRecord")
    policy = _schema("TrafficPolicy")
    reason_body = _json(_obj({"reason": REASON}, closed=False))
    evaluation = _obj({"id": INT, "model": STR, "version": INT, "dataset": {"type": "object"},
                       "metrics": {"type": "object"}, "gate": {}},
                      ("id", "model", "version", "dataset", "metrics"), closed=False)
    gate = _obj({"model": STR, "rules": _nullable({"type": "array", "items": STR}),
                 "versions": {"type": "array", "items": {"type": "object"}}},
                ("model", "rules", "versions"))
    register_body = {"multipart/form-data": {
        "schema": _obj({"file": {"type": "string", "format": "binary",
                                 "description": "The .onnx file."},
                        "metadata": _schema("VersionMetadata")}, ("file",)),
        "encoding": {"metadata": {"contentType": JSON}}}}
    return {
        "/admin/models": {"get": _op(
            "list_models", "admin", "Models with their versions, aliases and traffic",
            {**_ok(_obj({"models": {"type": "array", "items": _schema("ModelRecord")}},
                        ("models",))), **_errors(401, 403)}, role="ops")},
        "/admin/models/{name}/versions": {"post": _op(
            "register_version", "admin", "Register a new version (multipart upload)",
            {**_ok(record, 201, headers={"Location": {"schema": STR}}),
             **_errors(400, 401, 403, 409, 413, 415, 507)},
            role="ops", params=[name], body=register_body)},
        "/admin/models/{name}/versions/{ref}": {"get": _op(
            "get_version", "admin", "A version record with its lineage",
            {**_ok(record), **_errors(400, 401, 403, 404)}, role="ops", params=[name, ref])},
        "/admin/models/{name}/diff": {"get": _op(
            "diff_versions", "admin",
            "What changed between two versions (equal fields left out)",
            {**_ok(_obj({"model": STR, "a": INT, "b": INT,
                         "changes": {"type": "object", "additionalProperties": _obj(
                             {"a": {}, "b": {}}, ("a", "b"))}},
                        ("model", "a", "b", "changes"))),
             **_errors(400, 401, 403, 404)},
            role="ops", params=[name,
                                _param("a", "query", _schema("VersionRef"),
                                       "The first version (number or alias).", required=True),
                                _param("b", "query", _schema("VersionRef"),
                                       "The second version (number or alias).",
                                       required=True)])},
        "/admin/models/{name}/versions/{ref}/evaluations": {
            "post": _op(
                "evaluate_version", "admin",
                "Run the version over an uploaded labelled dataset and record the evaluation",
                {**_ok(evaluation, 201), **_errors(400, 401, 403, 404, 413, 415)},
                role="ops", params=[name, ref],
                body={"multipart/form-data": {"schema": _obj({"dataset": {
                    "type": "string", "format": "binary",
                    "description": ".npz with X and y, or .csv with a label column; at most "
                                   "GATEWAY_MAX_DATASET_BYTES"}}, ("dataset",))}},
                note="Runs inside the request: a bad or oversized dataset stores nothing."),
            "get": _op("list_evaluations", "admin", "The version's evaluations, newest first",
                       {**_ok(_obj({"model": STR, "evaluations": {
                           "type": "array", "items": {"type": "object"}}},
                           ("model", "evaluations"))), **_errors(400, 401, 403, 404)},
                       role="ops", params=[name, ref]),
        },
        "/admin/models/{name}/gate": {
            "get": _op("get_gate", "admin", "The gate and each live version's verdict",
                       {**_ok(gate), **_errors(400, 401, 403, 404)}, role="ops",
                       params=[name]),
            "put": _op("put_gate", "admin", "Replace the gate ([] or null removes it)",
                       {**_ok(gate), **_errors(400, 401, 403, 404, 413)}, role="ops",
                       params=[name], body=_json(_obj(
                           {"rules": _nullable({"type": "array", "items": STR}),
                            "reason": REASON}, ("rules",), closed=True,
                           example={"rules": ["accuracy >= 0.95",
                                              "accuracy >= champion - 0.01"]}))),
        },
        "/admin/models/{name}/versions/{ref}/quantize": {"post": _op(
            "quantize_version", "admin",
            "Register the INT8 copy as a new version (parent: this one), evaluated beside it",
            {**_ok(record, 201, headers={"Location": {"schema": STR}}),
             **_errors(400, 401, 403, 404, 413, 503)},
            role="ops", params=[name, ref], body=reason_body, body_required=False)},
        "/admin/models/{name}/aliases/{alias}": {
            "put": _op("put_alias", "admin", "Point an alias at a version",
                       {**_ok(_obj({"model": STR, "alias": STR, "version": INT,
                                    "previous": _nullable(INT)})),
                        **_errors(400, 401, 403, 404, 409, 413)},
                       role="ops", params=[name, _p("alias")], body=_json(_obj(
                           {"version": {"oneOf": [{"type": "integer", "minimum": 1},
                                                  _schema("VersionRef")]},
                            "reason": REASON}, ("version",), example={"version": 3}))),
            "delete": _op("delete_alias", "admin", "Remove an alias",
                          {**_ok(_obj({"model": STR, "alias": STR, "deleted": BOOL})),
                           **_errors(400, 401, 403, 404)},
                          role="ops", params=[name, _p("alias")]),
        },
        "/admin/models/{name}/versions/{ref}/archive": {"post": _op(
            "archive_version", "admin",
            "Archive a version (409 while a live policy gives it traffic)",
            {**_ok(record), **_errors(400, 401, 403, 404, 409, 413)},
            role="ops", params=[name, ref], body=reason_body, body_required=False)},
        "/admin/models/{name}/batching": {
            "get": _op("get_batching", "admin", "The model's micro-batching setting",
                       {**_ok(_schema("Batching")), **_errors(400, 401, 403, 404)},
                       role="ops", params=[name]),
            "put": _op("put_batching", "admin", "Turn micro-batching on, change or off",
                       {**_ok(_schema("Batching")), **_errors(400, 401, 403, 404, 413)},
                       role="ops", params=[name], body=_json(_schema("BatchingBody"))),
        },
        "/admin/models/{name}/traffic": {
            "get": _op("get_traffic", "admin", "The live traffic policy",
                       {**_ok(policy, headers=ETAG), **_errors(400, 401, 403, 404)},
                       role="ops", params=[name]),
            "put": _op("put_traffic", "admin", "Replace the traffic policy (atomically)",
                       {**_ok(policy, headers=ETAG),
                        **_errors(400, 401, 403, 404, 409, 413, 503)},
                       role="ops", params=[name, _p("IfMatch")],
                       body=_json(_schema("TrafficPolicyBody"))),
        },
        "/admin/models/{name}/rollback": {"post": _op(
            "rollback_traffic", "admin", "Go back to the previous revision's policy",
            {**_ok(policy, headers=ETAG), **_errors(400, 401, 403, 404, 409, 413, 503)},
            role="ops", params=[name, _p("IfMatch")], body=reason_body, body_required=False)},
        "/admin/models/{name}/traffic/history": {"get": _op(
            "traffic_history", "admin", "Every revision of the policy, newest first",
            {**_ok(_obj({"model": STR, "revisions": {"type": "array", "items": policy}},
                        ("model", "revisions"))), **_errors(400, 401, 403, 404)},
            role="ops", params=[name])},
        "/admin/audit": {"get": _op(
            "audit", "admin", "Who changed what, when and why (newest first)",
            {**_ok(_obj({"entries": {"type": "array", "items": _schema("AuditEntry")}},
                        ("entries",))), **_errors(400, 401, 403)},
            role="ops", params=[
                _param("limit", "query", {"type": "integer", "minimum": 1},
                       "At most this many entries (capped at 1000)."),
                _param("before", "query", {"type": "integer", "minimum": 1,
                                           "maximum": 2**63 - 1},
                       "Only entries with a smaller id (paging)."),
                _param("model", "query", _schema("ModelName"), "Only this model's entries.")])},
    }


def _rollout_paths() -> dict[str, Any]:
    name = _p("name")
    rollout = _obj({"id": INT, "model": STR, "candidate": INT, "baseline": INT,
                    "state": {"type": "string", "enum": ["running", "paused", "completed",
                                                         "rolled_back", "aborted"]},
                    "steps": {"type": "array", "items": INT}, "step_index": INT,
                    "weight": INT, "params": ANY_OBJECT, "last_decision": _nullable(ANY_OBJECT)},
                   ("id", "model", "candidate", "baseline", "state", "steps", "weight"))
    start_body = _json(_obj({
        "candidate": {"oneOf": [INT, STR], "description": "Version number or alias."},
        "baseline": {"oneOf": [INT, STR], "description": "Default: what serves now."},
        "steps": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100},
                  "description": "Increasing percents ending at 100 (default 5,25,50,100)."},
        "metric": {"type": "string", "enum": ["accuracy", "reward"]},
        "min_samples": {"type": "integer", "minimum": 10, "maximum": 10_000_000},
        "max_regression": {"type": "number", "minimum": 0},
        "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "max_p99_ms": _nullable({"type": "number", "minimum": 0, "exclusiveMinimum": True}),
        "alpha": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 0.5},
        "reason": REASON, "force": BOOL}, ("candidate",), closed=True))
    reason_body = _json(_obj({"reason": REASON}, closed=False))
    paths: dict[str, Any] = {
        "/admin/models/{name}/rollout": {
            "get": _op("rollout_status", "admin",
                       "The active (else the newest) rollout, with its audited decisions",
                       {**_ok(rollout), **_errors(400, 401, 403, 404)}, role="ops",
                       params=[name]),
            "post": _op("rollout_start", "admin",
                        "Start a progressive rollout of a candidate on outcomes",
                        {**_ok(rollout, 201), **_errors(400, 401, 403, 404, 409, 413, 503)},
                        role="ops", params=[name], body=start_body)},
    }
    for action, summary in (("pause", "Stop the controller acting; traffic stays as it is"),
                            ("resume", "Re-apply the current step and let the controller act"),
                            ("abort", "End the rollout and put the previous policy back")):
        paths[f"/admin/models/{{name}}/rollout/{action}"] = {"post": _op(
            f"rollout_{action}", "admin", summary,
            {**_ok(rollout), **_errors(400, 401, 403, 404, 409, 413, 503)}, role="ops",
            params=[name], body=reason_body, body_required=False)}
    return paths


def _drift_schema() -> dict[str, Any]:
    reference = _nullable(_obj(
        {"evaluation_id": INT, "dataset_sha256": STR, "dataset_name": STR, "rows": INT,
         "created_at": STR}, ("evaluation_id", "dataset_sha256", "rows")))
    version = _obj(
        {"version": INT,
         "status": {"type": "string",
                    "enum": ["ok", "no_reference", "too_few_samples", "invalid_reference"]},
         "score": _nullable(NUM), "threshold": NUM, "drifted": _nullable(BOOL),
         "samples": INT, "reference": reference, "problem": STR,
         "top_features": {"type": "array", "items": _obj({"feature": INT, "psi": NUM},
                                                         ("feature", "psi"))}},
        ("version", "status", "score", "threshold", "drifted", "samples", "reference",
         "top_features"))
    return _obj({"model": STR, "threshold": NUM, "min_samples": INT, "window": INT,
                 "computed_at": STR, "versions": {"type": "array", "items": version}},
                ("model", "threshold", "versions"))


def _analytics_paths() -> dict[str, Any]:
    window = [_p("name"), _p("since"), _p("until")]
    return {
        "/analytics/models/{name}/compare": {"get": _op(
            "compare_versions", "analytics",
            "Per-version outcomes, with confidence intervals and the test against the champion",
            {**_ok(_obj({"model": STR, "versions": {"type": "array", "items": ANY_OBJECT}},
                        ("versions",))), **_errors(400, 401, 403, 404)},
            role="analyst", params=window)},
        "/analytics/models/{name}/drift": {"get": _op(
            "input_drift", "analytics",
            "Per version: PSI of its sampled inputs against its evaluation's reference",
            {**_ok(_drift_schema()), **_errors(400, 401, 403, 404, 503)},
            role="analyst", params=[_p("name")],
            note="The score is the largest per-feature PSI over the newest sampled input rows "
                 "(GATEWAY_DRIFT_WINDOW); null until a version has a reference and enough "
                 "rows (`status` says which). Cached per worker for "
                 "GATEWAY_DRIFT_REFRESH_SECONDS (`computed_at`).")},
        "/analytics/models/{name}/outcomes": {"get": _op(
            "export_outcomes", "analytics", "The logged outcomes, streamed as CSV or JSON lines",
            {"200": {"description": "One row per served request and version", "content": {
                "text/csv": {"schema": STR}, "application/x-ndjson": {"schema": STR}}},
             **_errors(400, 401, 403, 404)},
            role="analyst", params=[
                *window,
                _param("format", "query", {"type": "string", "enum": ["csv", "jsonl"]},
                       "csv (default) or jsonl."),
                _param("version", "query", {"type": "string", "pattern": "^[0-9]+$"},
                       "Only this version.", empty_is_absent=True),
                _param("kind", "query", {"type": "string", "enum": ["primary", "shadow"]},
                       "Only primary or only shadow rows.")])},
    }


def _dashboard_paths() -> dict[str, Any]:
    hours = _param("hours", "query", {"type": "integer", "minimum": 1, "maximum": 2160},
                   "The charts' window in hours.")
    page = {HTML: {"schema": STR}}
    traffic_form = {FORM: {"schema": _obj(
        {"csrf": STR, "revision": {"type": "string", "pattern": "^[0-9]*$"},
         "hours": STR, "reason": {"type": "string", "maxLength": 2000}},
        ("csrf",), additionalProperties=STR,
        description="weight-<version> and shadow-<version> fields carry the policy.")}}
    rollback_form = {FORM: {"schema": _obj(
        {"csrf": STR, "revision": {"type": "string", "pattern": "^[0-9]*$"}, "hours": STR,
         "reason": {"type": "string", "maxLength": 2000}}, ("csrf",))}}
    change_errors = _errors(400, 401, 403, 404, 409, 413, 503, html=True)
    return {
        "/dashboard": {"get": _op(
            "dashboard", "dashboard", "The web page: models, versions, traffic and charts",
            {"200": {"description": "The page", "content": page}, **REDIRECT,
             **_errors(400, 401, 403, 404, html=True)},
            role="analyst", params=[
                _param("model", "query", _schema("ModelName"), "Show only this model.",
                       empty_is_absent=True),
                hours])},
        "/dashboard/models/{name}/traffic": {"post": _op(
            "dashboard_set_traffic", "dashboard", "The traffic form (ops, with CSRF token)",
            {**REDIRECT, **change_errors}, role="analyst", params=[_p("name")],
            body=traffic_form, note=OPS_FORM_NOTE)},
        "/dashboard/models/{name}/rollback": {"post": _op(
            "dashboard_rollback", "dashboard", "The rollback form (ops, with CSRF token)",
            {**REDIRECT, **change_errors}, role="analyst", params=[_p("name")],
            body=rollback_form, note=OPS_FORM_NOTE)},
        "/dashboard/login": {
            "get": _op("dashboard_login_form", "dashboard", "The sign-in page",
                       {"200": {"description": "The page", "content": page}}, role=None,
                       params=[_param("next", "query", STR, "Where to go after signing in.")]),
            "post": _op("dashboard_login", "dashboard",
                        "Sign in with a pasted token (kept in the session cookie)",
                        {**REDIRECT, **{str(c): {"description": STATUS_TEXT[c],
                                                 "content": page}
                                        for c in (400, 401, 403)}, **_errors(413)},
                        role=None, body={FORM: {"schema": _obj(
                            {"csrf": STR, "token": STR, "next": STR}, ("csrf", "token"))}}),
        },
        "/dashboard/logout": {"post": _op(
            "dashboard_logout", "dashboard", "Sign out",
            {**REDIRECT, "400": {"description": STATUS_TEXT[400], "content": page},
             **_errors(413)}, role=None,
            body={FORM: {"schema": _obj({"csrf": STR}, ("csrf",))}})},
    }


def _operations_paths() -> dict[str, Any]:
    ready = {"description": "Ready", "content": _json(_schema("Readiness"))}
    return {
        "/healthz": {"get": _op("healthz", "operations", "The process is up",
                                _ok(_obj({"status": STR, "pid": INT}, ("status",))),
                                role=None)},
        "/readyz": {"get": _op("readyz", "operations",
                               "Registry, Redis and a routed version of each model ready",
                               {"200": ready, "503": {**ready, "description": "Not ready"}},
                               role=None)},
        "/metrics": {"get": _op("metrics", "operations", "Prometheus text format",
                                {"200": {"description": "Metrics", "content": {
                                    "text/plain": {"schema": STR}}}}, role=None)},
        "/openapi.json": {"get": _op("openapi", "operations", "This document",
                                     _ok(ANY_OBJECT), role=None)},
    }


def build_document(version: str) -> dict[str, Any]:
    """The whole OpenAPI document for gateway release `version`: a new, unshared tree on
    every call (the module's schema constants are copied, not referenced)."""
    return copy.deepcopy({
        "openapi": OPENAPI_VERSION,
        "info": {"title": "model-gateway", "version": version,
                 "description": "Versioned ONNX model serving: inference (JSON and the Open "
                                "Inference Protocol), feedback, registry and traffic admin, "
                                "analytics. Errors are `{\"error\": {\"code\", \"message\"}}`, "
                                "and `{\"error\": \"message\"}` on /v2 routes. Any route may "
                                "also answer 408 (the request was not received within "
                                "GATEWAY_REQUEST_TIMEOUT), 413 (body over the limit), 414 or "
                                "431 (request line or headers too large); those answered before "
                                "routing use the first shape, on /v2 too."},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": t} for t in ("inference", "v2", "feedback", "admin", "analytics",
                                       "dashboard", "operations")],
        "paths": {**_inference_paths(), **_admin_paths(), **_rollout_paths(),
                  **_analytics_paths(),
                  **_dashboard_paths(), **_operations_paths()},
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`gateway token create --role app|analyst|ops --name N`"}},
            "schemas": _schemas(),
            "parameters": _parameters(),
        },
    })

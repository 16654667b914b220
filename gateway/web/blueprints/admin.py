"""Ops routes: the registry (versions, aliases, archive, batching) and the audit trail."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from flask import Blueprint, g, request
from sqlalchemy.exc import SQLAlchemyError

from gateway.traffic.admin import parse_if_match
from gateway.web.current import services
from gateway.web.responses import json_response, read_json_object
from gateway.web.writes import announce_writes
from registry import service
from registry import traffic as traffic_sql
from registry.errors import InvalidInput, PayloadTooLarge, Unavailable, UnsupportedMediaType
from registry.names import check_model_name, check_reason

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.after_request(announce_writes)

MULTIPART_OVERHEAD = 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_AUDIT_ID = 2**63 - 1


@bp.get("/models")
def list_models() -> Any:
    """From the registry; while it is unreachable, from this worker's copy of it (the catalog
    snapshot), marked by a `Warning` header, so that ops can still see what is served."""
    svc = services()
    headers: dict[str, str] = {}
    try:
        models = service.list_models(svc.db)
    except SQLAlchemyError:
        snapshot = svc.catalog.snapshot
        if snapshot.counter < 0:
            raise Unavailable("the registry is unreachable and this worker has not read it "
                              "yet; try again shortly") from None
        models = copy.deepcopy(list(snapshot.records))
        headers["Warning"] = '110 - "registry unreachable; this worker\'s last copy"'
    for model in models:
        model["traffic"] = svc.traffic.show(model["model"])
    return json_response({"models": models}, headers=headers)


@bp.post("/models/<name>/versions")
def register_version(name: str) -> Any:
    svc = services()
    check_model_name(name)
    limit = svc.settings.max_model_bytes + MULTIPART_OVERHEAD
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"upload is {request.content_length} bytes; the model file limit "
            f"(GATEWAY_MAX_MODEL_BYTES) is {svc.settings.max_model_bytes}"
        )
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            "send multipart/form-data with the .onnx file in 'file' and JSON in 'metadata'"
        )
    request.max_content_length = limit
    # Not MAX_METADATA_BYTES: werkzeug checks this limit against its multipart decoder's
    # buffer, which also holds *file* data while it looks for the next boundary, so a small
    # value refuses real .onnx files. The metadata part's own limit is checked below.
    request.max_form_memory_size = limit
    upload = request.files.get("file")
    if upload is None:
        raise InvalidInput("the multipart body has no 'file' part holding the .onnx file")
    data = upload.stream.read(svc.settings.max_model_bytes + 1)
    raw_meta = request.form.get("metadata")
    metadata = None
    if raw_meta and len(raw_meta.encode()) > MAX_METADATA_BYTES:
        raise PayloadTooLarge(
            f"metadata is {len(raw_meta.encode())} bytes; the limit is {MAX_METADATA_BYTES}")
    if raw_meta:
        try:
            metadata = orjson.loads(raw_meta)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"metadata is not valid JSON: {exc}") from None
    record = service.register_version(
        svc.db, svc.store, name, data, metadata, g.actor, svc.settings.max_model_bytes
    )
    return json_response(record, 201, {"Location": f"/admin/models/{name}/versions/"
                                                   f"{record['version']}"})


@bp.get("/models/<name>/versions/<ref>")
def get_version(name: str, ref: str) -> Any:
    """The record with what `gateway models show` adds: micro-batching, latest evaluation, gate
    status and the comparison with the parent on the same dataset."""
    from gateway.lifecycle.summary import version_view

    return json_response(version_view(services().db, name, ref))


@bp.get("/models/<name>/diff")
def diff(name: str) -> Any:
    """What changed between versions `a` and `b` (numbers or aliases); equal fields left out."""
    from gateway.lifecycle.diff import diff_versions

    refs = [request.args.get(key, "").strip() for key in ("a", "b")]
    if not all(refs):
        raise InvalidInput("give both versions to compare: ?a=V&b=V (numbers or aliases)")
    return json_response(diff_versions(services().db, name, refs[0], refs[1]))


@bp.put("/models/<name>/aliases/<alias>")
def put_alias(name: str, alias: str) -> Any:
    body = read_json_object(services().settings.max_body_bytes)
    if "version" not in body:
        raise InvalidInput('send {"version": <integer or alias>}')
    result = service.set_alias(
        services().db, name, alias, body["version"], g.actor, check_reason(body.get("reason"))
    )
    return json_response(result)


@bp.delete("/models/<name>/aliases/<alias>")
def delete_alias(name: str, alias: str) -> Any:
    service.delete_alias(services().db, name, alias, g.actor)
    return json_response({"model": name, "alias": alias, "deleted": True})


@bp.post("/models/<name>/versions/<ref>/archive")
def archive(name: str, ref: str) -> Any:
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes) if request.content_length else {}
    live = traffic_sql.versions_with_traffic(svc.db, name)
    reason = check_reason(body.get("reason"))
    record = service.archive_version(svc.db, name, ref, g.actor, reason, live)
    return json_response(record)


@bp.get("/models/<name>/batching")
def get_batching(name: str) -> Any:
    return json_response(service.get_batching(services().db, name))


@bp.put("/models/<name>/batching")
def put_batching(name: str) -> Any:
    """`{"max_batch": N, "max_wait_us": U, "reason": R}` turns micro-batching on (or changes
    it); `{"enabled": false, "reason": R}` turns it off."""
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes)
    reason = check_reason(body.get("reason"))
    settings = {key: value for key, value in body.items() if key != "reason"}
    return json_response(service.set_batching(svc.db, name, settings, g.actor, reason))


@bp.get("/models/<name>/traffic")
def get_traffic(name: str) -> Any:
    policy = services().traffic.show(name)
    return json_response(policy, headers={"ETag": f'"{policy["revision"]}"'})


@bp.put("/models/<name>/traffic")
def put_traffic(name: str) -> Any:
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes)
    policy = svc.traffic.set(name, body, g.actor, parse_if_match(request.headers.get("If-Match")))
    return json_response(policy, headers={"ETag": f'"{policy["revision"]}"'})


@bp.post("/models/<name>/rollback")
def rollback(name: str) -> Any:
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes) if request.content_length else {}
    policy = svc.traffic.rollback(name, g.actor, check_reason(body.get("reason")),
                                  parse_if_match(request.headers.get("If-Match")))
    return json_response(policy, headers={"ETag": f'"{policy["revision"]}"'})


@bp.get("/models/<name>/traffic/history")
def traffic_history(name: str) -> Any:
    return json_response({"model": name, "revisions": services().traffic.history(name)})


@bp.get("/audit")
def audit() -> Any:
    args = request.args
    try:
        limit = min(int(args.get("limit", 100)), 1000)
        before = int(args["before"]) if "before" in args else None
    except ValueError:
        raise InvalidInput("limit and before must be integers") from None
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    if before is not None and not 1 <= before <= MAX_AUDIT_ID:  # beyond BIGINT the query fails
        raise InvalidInput(f"before must be an audit entry id from 1 to {MAX_AUDIT_ID}")
    model = args.get("model")
    if model is not None:
        check_model_name(model)
    entries = service.list_audit(services().db, model=model, limit=limit, before_id=before)
    return json_response({"entries": entries})

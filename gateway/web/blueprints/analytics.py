"""Analyst routes: the version comparison, input drift and the outcome export (streamed)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, request

from gateway.outcomes.comparison import compare, window
from gateway.web.current import services
from gateway.web.responses import json_response
from registry.errors import InvalidInput
from registry.names import MAX_VERSION, ascii_number
from registry.outcomes import EXPORT_COLUMNS, check_kind, export_rows

bp = Blueprint("analytics", __name__, url_prefix="/analytics")


@bp.get("/models/<name>/compare")
def compare_versions(name: str) -> Any:
    svc = services()
    svc.catalog.model(name)
    since, until = window(request.args.get("since"), request.args.get("until"))
    return json_response(compare(svc.db, name, since, until))


@bp.get("/models/<name>/drift")
def drift(name: str) -> Any:
    """Per version: PSI of its sampled inputs against its evaluation reference (cached for
    GATEWAY_DRIFT_REFRESH_SECONDS, like /metrics: `computed_at` says when)."""
    entry = services().catalog.model(name)
    return json_response(services().drift.describe(name, sorted(entry.versions)))


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return "" if value is None else value


def csv_chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for count, row in enumerate(rows, start=1):
        writer.writerow([_cell(v) for v in row])
        if count % 1000 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def jsonl_chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[bytes]:
    chunk: list[bytes] = []
    for row in rows:
        record = dict(zip(EXPORT_COLUMNS, row, strict=True))
        chunk.append(orjson.dumps(record, option=orjson.OPT_NAIVE_UTC))
        if len(chunk) >= 1000:
            yield b"\n".join(chunk) + b"\n"
            chunk = []
    if chunk:
        yield b"\n".join(chunk) + b"\n"


@bp.get("/models/<name>/outcomes")
def export(name: str) -> Any:
    svc = services()
    svc.catalog.model(name)
    args = request.args
    fmt = args.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        raise InvalidInput("format must be csv or jsonl")
    since, until = window(args.get("since"), args.get("until"))
    version = None
    if args.get("version"):
        # in the registry's range: beyond SQL INTEGER the query fails after the stream began
        version = ascii_number(args["version"], 10)
        if version is None or not 1 <= version <= MAX_VERSION:
            raise InvalidInput(f"version must be a version number from 1 to {MAX_VERSION}")
    rows = export_rows(svc.db, name, since, until, version, check_kind(args.get("kind")))
    body = csv_chunks(rows) if fmt == "csv" else jsonl_chunks(rows)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(body, mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="{name}-outcomes.{fmt}"'})

"""JSON in and out with orjson, and the one place request bodies are read and size-checked."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, request

from gateway.serving.entry import JSON_OPTIONS, json_object
from registry.errors import PayloadTooLarge


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body, option=JSON_OPTIONS),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def read_body(limit: int) -> bytes:
    """The raw body, refused with 413 before reading when it is (or claims to be) too large."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit}")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
    return data


def read_json_object(limit: int) -> dict[str, Any]:
    return json_object(read_body(limit))

"""JSON in and out with orjson, and the one place request bodies are read and size-checked."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response, request

from registry.errors import InvalidInput, PayloadTooLarge

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


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


def parse_json(data: bytes) -> Any:
    if not data:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def read_json_object(limit: int) -> dict[str, Any]:
    body = parse_json(read_body(limit))
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body

"""The HTTP glue `/predict` and the V2 infer routes share: the request id, the caller's token,
the routing key, the response headers and the work deferred until the response is sent.

Each route only translates its wire format (`gateway.serving.codecs`); the id is taken before
the body is read so that even a refused body answers with `X-Request-Id`.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from flask import Response, g, request

from gateway.services import Services
from gateway.serving.dataplane import Decoder, InferenceResult, request_id_from
from registry.errors import InvalidInput

MAX_ROUTING_KEY = 256

R = TypeVar("R", bound=Response)


class Call(NamedTuple):
    request_id: str
    chosen_by_caller: bool  # a caller's id must be new for the model (409 otherwise)


def start_call(svc: Services) -> Call:
    """The caller's `X-Request-Id` (checked) or a fresh one, echoed on every answer."""
    header = request.environ.get("HTTP_X_REQUEST_ID")  # the environ: this is the hot path
    g.request_id = request_id = request_id_from(header, svc.dataplane.fresh_ids)
    return Call(request_id, header is not None)


def routing_key() -> str | None:
    """`X-Routing-Key`, bounded so a huge header cannot cost hashing time."""
    key: str | None = request.environ.get("HTTP_X_ROUTING_KEY")
    if key is not None and not 1 <= len(key) <= MAX_ROUTING_KEY:
        raise InvalidInput(f"X-Routing-Key must be 1 to {MAX_ROUTING_KEY} characters")
    return key


def run_call(svc: Services, call: Call, model: str, version_ref: str | None,
             decode: Decoder) -> InferenceResult:
    return svc.dataplane.infer(model, version_ref, decode, call.request_id, routing_key(),
                               caller_id=call.chosen_by_caller, caller=g.get("caller"))


def finish_call(response: R, result: InferenceResult) -> R:
    """The contract's headers, and shadow copies started once the response is out."""
    response.headers["X-Model-Version"] = str(result.version)
    response.headers["X-Request-Id"] = result.request_id
    response.call_on_close(result.run_deferred)
    return response

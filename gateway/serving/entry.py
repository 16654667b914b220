"""The data plane's own WSGI entry: `POST /predict` and the V2 infer routes, without Flask.

Flask's request machinery (request and app contexts, URL matching, before/after hooks, the
response object) cost more per request than routing, decoding and running a small model
together. The inference routes are therefore answered here, by a WSGI middleware wrapped
around the Flask app in the standard way (`app.wsgi_app = InferenceEntry(app.wsgi_app, ...)`):
a `POST` to one of these paths never reaches Flask; everything else passes through untouched.

It answers exactly as the routes did under Flask: the same token check and role grants
(`gateway.serving.tokens`), the same request-id rules, body limits, codecs and data plane, the
same JSON error shapes (`{"error": {"code", "message"}}`, or `{"error": message}` on `/v2`),
the same headers (`X-Model-Version`, `X-Request-Id`), the same outcome rows and metrics. Shadow
copies start once the response has been handed to the server (the body's `close`). The Flask
views of these routes stay registered, for the URL map and the OpenAPI document, and answer
through `answer` too when the app is called without this middleware.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NamedTuple

import numpy as np
import orjson
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.serving.catalog import VersionInfo
from gateway.serving.codecs.predict_json import decode_json_inputs, outputs_for_json
from gateway.serving.codecs.tensors import Limits
from gateway.serving.codecs.v2 import decode_v2_request, encode_v2_response
from gateway.serving.dataplane import DataPlane, Decoder, InferenceResult, request_id_from
from gateway.serving.tokens import TokenVerifier, role_allows
from registry.errors import Forbidden, GatewayError, InvalidInput, PayloadTooLarge
from registry.names import ascii_number

log = logging.getLogger(__name__)

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
MAX_ROUTING_KEY = 256
ROLE = "app"
STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Route(NamedTuple):
    v2: bool
    model: str | None  # None: /predict, where the body or X-Model names it
    version_ref: str | None


def match(method: str, path: str) -> Route | None:
    """The inference route a request is for, or None for everything else (Flask's)."""
    if method != "POST":
        return None
    if path == "/predict":
        return Route(False, None, None)
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path.split("/")  # "", "v2", "models", name, ["versions", ref,] "infer"
    if len(parts) == 5 and parts[3]:
        return Route(True, parts[3], None)
    if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
        return Route(True, parts[3], parts[5])
    return None


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    deferred: Callable[[], None] | None = None


class ClosingBody:
    """The response body; the server calls `close` once it has sent it, which starts the work
    the caller must not wait for (shadow copies)."""

    def __init__(self, body: bytes, on_close: Callable[[], None] | None) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield self._body

    def close(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


def error_body(v2: bool, code: str, message: str) -> bytes:
    """The contract's error shape; the Open Inference Protocol's on `/v2`."""
    return orjson.dumps({"error": message} if v2 else {"error": {"code": code,
                                                                 "message": message}})


def _path(environ: dict[str, Any]) -> str:
    """PATH_INFO as werkzeug reads it: the server's latin-1 string holds UTF-8 bytes."""
    raw: str = environ.get("PATH_INFO", "")
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return raw


class InferenceEntry:
    """WSGI middleware: inference routes here, everything else to `fallback` (Flask)."""

    def __init__(self, fallback: WSGIApp, dataplane: DataPlane, limits: Limits,
                 max_body_bytes: int, verifier: TokenVerifier, auth: bool) -> None:
        self.fallback = fallback
        self.dataplane = dataplane
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.verifier = verifier
        self.auth = auth

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        route = match(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        if route is not None and route.v2:  # names as werkzeug decodes them
            route = match("POST", _path(environ))
        if route is None:
            return self.fallback(environ, start_response)
        answer = self.answer(route, environ)
        start_response(STATUS_LINES.get(answer.status, str(answer.status)),
                       [*answer.headers, ("Content-Length", str(len(answer.body)))])
        return ClosingBody(answer.body, answer.deferred)

    # ---- one request -----------------------------------------------------------------------

    def answer(self, route: Route, environ: dict[str, Any]) -> Answer:
        request_id: str | None = None
        try:
            caller = self._caller(environ)
            header_id = environ.get("HTTP_X_REQUEST_ID")
            request_id = request_id_from(header_id, self.dataplane.fresh_ids)
            body = self._body(environ)
            serve = self._v2 if route.v2 else self._predict
            return serve(route, environ, body, request_id, header_id is not None, caller)
        except GatewayError as exc:
            return self._error(route, exc.status, exc.code, exc.message, request_id)
        except TimeoutError as exc:  # the body stopped arriving (gateway.web.workers)
            return self._error(route, 408, "request_timeout",
                               f"{exc}; send it whole without pausing", request_id)
        except (OperationalError, InterfaceError):
            log.warning("database unreachable on POST %s", environ.get("PATH_INFO", "")[:200])
            return self._error(route, 503, "unavailable",
                               "the database is unreachable; retry shortly", request_id)
        except Exception:
            log.exception("unhandled error on POST %s", environ.get("PATH_INFO", "")[:200])
            return self._error(route, 500, "internal", "internal error; see the gateway's log",
                               request_id)

    def _caller(self, environ: dict[str, Any]) -> str | None:
        """The key id of the token that sends the request (None with auth off)."""
        if not self.auth:
            return None
        record = self.verifier.verify(environ.get("HTTP_AUTHORIZATION"))
        if not role_allows(record.role, ROLE):
            raise Forbidden(f"this route needs the {ROLE} role; the token has {record.role}")
        return record.key_id

    def _body(self, environ: dict[str, Any]) -> bytes:
        limit = self.max_body_bytes
        length = ascii_number(environ.get("CONTENT_LENGTH") or "", 18)
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit}")
        stream = environ.get("wsgi.input")
        if stream is None or (length is None and "chunked" not in
                              environ.get("HTTP_TRANSFER_ENCODING", "").lower()):
            return b""
        data: bytes = stream.read(limit + 1) if length is None else stream.read(length)
        if len(data) > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        return data

    @staticmethod
    def _routing_key(environ: dict[str, Any]) -> str | None:
        """`X-Routing-Key`, bounded so a huge header cannot cost hashing time."""
        key: str | None = environ.get("HTTP_X_ROUTING_KEY")
        if key is not None and not 1 <= len(key) <= MAX_ROUTING_KEY:
            raise InvalidInput(f"X-Routing-Key must be 1 to {MAX_ROUTING_KEY} characters")
        return key

    def _run(self, environ: dict[str, Any], model: str, version_ref: str | None,
             decode: Decoder, request_id: str, chosen: bool, caller: str | None
             ) -> InferenceResult:
        return self.dataplane.infer(model, version_ref, decode, request_id,
                                    self._routing_key(environ), caller_id=chosen,
                                    caller=caller)

    def _predict(self, route: Route, environ: dict[str, Any], raw: bytes, request_id: str,
                 chosen: bool, caller: str | None) -> Answer:
        body = json_object(raw)
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
        limits = self.limits
        result = self._run(environ, model, environ.get("HTTP_X_MODEL_VERSION"),
                           lambda version: (decode_json_inputs(inputs, version.inputs, limits),
                                            None),
                           request_id, chosen, caller)
        payload = orjson.dumps({"request_id": result.request_id, "model": model,
                                "version": result.version,
                                "outputs": outputs_for_json(result.outputs)},
                               option=JSON_OPTIONS)
        return self._ok(payload, "application/json", result)

    def _v2(self, route: Route, environ: dict[str, Any], raw: bytes, request_id: str,
            chosen: bool, caller: str | None) -> Answer:
        assert route.model is not None
        header_length = None
        raw_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        if raw_length is not None:
            header_length = ascii_number(raw_length.strip(), 18)  # no longer than a body
            if header_length is None:
                raise InvalidInput(
                    "Inference-Header-Content-Length must be a non-negative integer")
        parsed: dict[str, Any] = {}
        limits = self.limits

        def decode(version: VersionInfo) -> tuple[dict[str, np.ndarray], list[str] | None]:
            req = decode_v2_request(raw, header_length, version.inputs, version.output_names,
                                    limits)
            parsed["request"] = req
            return req.inputs, ([o.name for o in req.outputs] if req.outputs is not None
                                else None)

        result = self._run(environ, route.model, route.version_ref, decode, request_id,
                           chosen, caller)
        req = parsed["request"]
        payload, headers = encode_v2_response(route.model, result.version, req.id,
                                              result.outputs, req.outputs,
                                              req.binary_output_default)
        answer = self._ok(payload, headers.pop("Content-Type"), result)
        answer.headers.extend(headers.items())
        return answer

    @staticmethod
    def _ok(payload: bytes, content_type: str, result: InferenceResult) -> Answer:
        return Answer(200, payload, [("Content-Type", content_type),
                                     ("X-Model-Version", str(result.version)),
                                     ("X-Request-Id", result.request_id)],
                      result.run_deferred if result.deferred else None)

    @staticmethod
    def _error(route: Route, status: int, code: str, message: str, request_id: str | None
               ) -> Answer:
        headers = [("Content-Type", "application/json")]
        if request_id is not None:
            headers.append(("X-Request-Id", request_id))
        return Answer(status, error_body(route.v2, code, message), headers)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (every JSON route reads bodies so)."""
    if not raw:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body

"""Errors as the contract shapes them: `{"error": {"code", "message"}}`, or `{"error": message}`
on the `/v2` routes (the Open Inference Protocol). Typed errors (`registry.errors`) carry their
status; werkzeug's HTTP errors, a body that stopped arriving, a database that is unreachable and
anything unexpected are mapped here, in one place, and never answered with HTML or a trace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from gateway.serving.entry import error_body
from gateway.web.workers import RequestReceiveTimeout
from registry.errors import GatewayError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "headers_too_large",
    507: "insufficient_storage",
}



def error_response(status: int, code: str, message: str) -> Any:
    """The same shapes as the data plane's entry (`gateway.serving.entry.error_body`)."""
    return Response(error_body(request.path.startswith("/v2"), code, message), status=status,
                    mimetype="application/json")


def register_error_handlers(app: Flask) -> None:
    """Every error, on every route, in the contract's JSON shape: one mapping for the app."""

    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Any:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if isinstance(exc.__context__, RequestReceiveTimeout):  # werkzeug's stream wrapped it
            return _receive_timeout(exc.__context__)
        status = exc.code or 500
        code = HTTP_CODES.get(status, "error")
        message = exc.description or exc.name
        if status == 404:
            message = f"no route for {request.method} {request.path[:200]}"
        response = error_response(status, code, message)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(RequestReceiveTimeout)
    def _receive_timeout(exc: RequestReceiveTimeout) -> Any:
        # the body stopped arriving (gateway.web.workers): wherever it was being read
        return error_response(408, "request_timeout", f"{exc}; send it whole without pausing")

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unreachable(exc: OperationalError | InterfaceError) -> Any:
        """The database refused or dropped the connection (restart, failover, outage): the
        caller may retry, so `503 unavailable`, like the token store's outage, not a `500`."""
        first = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
        log.warning("database unreachable on %s %s: %s", request.method, request.path[:200],
                    first[0][:200] if first else exc.__class__.__name__)
        return error_response(503, "unavailable", "the database is unreachable; retry shortly")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return error_response(500, "internal", "internal error; see the gateway's log")

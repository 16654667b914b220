"""Errors that carry their HTTP status and stable code (the contract's error shape).

Raised anywhere below the HTTP layer; mapped to `{"error": {"code", "message"}}` in one place
(`gateway.web.app`) and to a one-line message by the CLI.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(GatewayError):
    status, code = 400, "invalid_input"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class UnknownModel(NotFound):
    code = "unknown_model"


class UnknownVersion(NotFound):
    code = "unknown_version"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class PreconditionFailed(Conflict):
    """A stale `If-Match` revision: the contract answers it with 409 like other conflicts."""


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class InsufficientStorage(GatewayError):
    """The disk that must hold the request's result is full (WebDAV's 507, RFC 4918)."""

    status, code = 507, "insufficient_storage"


class Unavailable(GatewayError):
    status, code = 503, "unavailable"

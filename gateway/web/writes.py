"""Control-plane writes answer only once every worker has them (`gateway.serving.registry_sync`)."""

from __future__ import annotations

from flask import Response, request

from gateway.web.current import services

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def announce_writes(response: Response) -> Response:
    """An `after_request` hook for blueprints that change the registry or a policy: a
    successful write (2xx, or the dashboard's redirect after a form) is announced to every
    worker before the response leaves."""
    if request.method in WRITE_METHODS and 200 <= response.status_code < 400:
        services().announcer.announce((request.view_args or {}).get("name"))
    return response

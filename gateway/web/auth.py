"""Bearer-token auth, enforced for every route in one `before_request` hook.

Access is decided by blueprint, default-deny: a route whose blueprint is not listed needs
`ops`, so a route added later is never accidentally public. Tokens are checked by the same
`TokenVerifier` and role grants as the data plane's entry (`gateway.serving.tokens`).
"""

from __future__ import annotations

import logging

from flask import Flask, g, request, session

from gateway.serving.tokens import TokenVerifier, role_allows
from registry.errors import Forbidden

log = logging.getLogger(__name__)

PUBLIC_BLUEPRINTS = {"health", "v2_health", "metrics", "dashboard_login", "openapi"}
BLUEPRINT_ROLES = {
    "predict": "app",
    "v2": "app",
    "feedback": "feedback",
    "analytics": "analyst",
    "dashboard": "analyst",
    "admin": "ops",
    "lifecycle": "ops",
}
ANONYMOUS = "anonymous"


def required_role(blueprint: str | None) -> str | None:
    """The role a blueprint needs; None means public."""
    if blueprint in PUBLIC_BLUEPRINTS:
        return None
    return BLUEPRINT_ROLES.get(blueprint or "", "ops")


def init_app(app: Flask, verifier: TokenVerifier, enabled: bool) -> None:
    app.extensions["mgw_tokens"] = verifier
    if not enabled:
        log.warning(
            "GATEWAY_AUTH=off: every route is open to anyone who can reach this port. "
            "Use this for local experiments only."
        )

    @app.before_request
    def _authenticate() -> None:
        g.actor = ANONYMOUS
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
        if req.url_rule is None:  # 404/405: let the error handler answer
            return
        blueprint = req.blueprint
        needed = required_role(blueprint)
        if needed is None or not enabled:
            return
        header = req.environ.get("HTTP_AUTHORIZATION")
        if header is None and blueprint == "dashboard" and "token" in session:
            header = f"Bearer {session['token']}"  # a browser signed in at /dashboard/login
        record = verifier.verify(header)
        if not role_allows(record.role, needed):
            raise Forbidden(f"this route needs the {needed} role; the token has {record.role}")
        g.actor = record.name
        g.caller = record.key_id  # recorded with each outcome: who may label the request
        g.role = record.role

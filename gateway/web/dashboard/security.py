"""Who is looking at the dashboard, CSRF, safe redirects and the headers every page carries:
no caching, no framing, no scripts."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import (
    current_app,
    g,
    render_template,
    request,
    session,
    url_for,
)

from gateway.web.current import services
from registry.errors import Forbidden, InvalidInput

FORM_MIMETYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# ---------------------------------------------------------------------------------------------
# Who is looking, CSRF, errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str
    via_session: bool

    @property
    def is_ops(self) -> bool:
        return self.role == "ops"


def current_viewer() -> Viewer:
    """The person behind this request, as the auth hook saw them (verifications are cached).

    With GATEWAY_AUTH=off every route is open, /admin included, so the forms are too.
    """
    if not services().settings.auth:
        return Viewer(g.get("actor", "anonymous"), "ops", False)
    header = request.headers.get("Authorization")
    via_session = header is None
    if header is None:
        header = f"Bearer {session.get('token', '')}"
    record = current_app.extensions["mgw_tokens"].verify(header)
    return Viewer(record.name, record.role, via_session)


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(),
                                                                expected.encode()):
        raise InvalidInput("the form's security token is missing or out of date; reload the "
                           "page and submit again")


def require_ops() -> Viewer:
    viewer = current_viewer()
    if not viewer.is_ops:
        raise Forbidden(f"changing traffic needs the ops role; you are signed in as "
                        f"{viewer.name} with the {viewer.role} role")
    return viewer


def wants_html() -> bool:
    """Browsers (and HTML forms) get pages; API-style clients get the contract's JSON errors."""
    if request.method == "POST" and request.mimetype in FORM_MIMETYPES:
        return True
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: `next` must never send a person to another site."""
    fallback = url_for("dashboard.dashboard")
    if not value or not value.startswith("/dashboard") or "\\" in value:
        return fallback
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(c in value for c in "\r\n"):
        return fallback
    return value


def error_page(status: int, message: str) -> Any:
    return render_template("dashboard_error.html", status=status, message=message,
                           login_url=url_for("dashboard_login.login_form")), status


def security_headers(response: Any) -> Any:
    """No caching (pages hold CSRF tokens), no framing (ops buttons), no scripts at all."""
    nonce = g.get("csp_nonce")
    styles = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {styles}; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def template_globals() -> dict[str, Any]:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return {"csp_nonce": g.csp_nonce}

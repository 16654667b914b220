"""`/dashboard`: the page for people (analysts and ops), server-rendered, no JavaScript.

A browser cannot send `Authorization: Bearer` when it navigates, so a person pastes a token
into `/dashboard/login` once; it is kept in the signed, HttpOnly, SameSite=Strict session
cookie and the auth hook (`gateway.web.auth`) reads it from there for this blueprint only.
Clients that do send the header keep working as with every other route.

Charts are inline SVG drawn on the server from SQL aggregates (`registry.timeseries`,
`gateway.web.dashboard.charts`): nothing is fetched from the internet, no build step, and the
page works with scripts off. What the page shows is built in `views`; who is looking, CSRF and
the security headers are in `security`; this module has the routes.

Ops change traffic through the same `TrafficAdmin` as the API (same validation, same audit),
with a CSRF token from the session in every form and the live revision as `If-Match`, so a
page loaded before someone else's change gets a conflict instead of silently undoing it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from gateway.traffic.admin import parse_if_match
from gateway.web.current import services
from gateway.web.dashboard.charts import choose_window, fmt_duration
from gateway.web.dashboard.security import (
    check_csrf,
    csrf_token,
    current_viewer,
    error_page,
    require_ops,
    safe_next,
    security_headers,
    template_globals,
    wants_html,
)
from gateway.web.dashboard.views import Failure, fmt_when, form_from_request, model_view
from gateway.web.errors import error_response
from gateway.web.writes import announce_writes
from registry import service
from registry.errors import Conflict, GatewayError, InvalidInput, Unauthorized
from registry.names import ascii_number, check_model_name, check_reason

bp = Blueprint("dashboard", __name__)
bp.after_request(announce_writes)
login_bp = Blueprint("dashboard_login", __name__)
DASHBOARD_ROLES = ("analyst", "ops")
DEFAULT_HOURS = 24
MAX_HOURS = 24 * 90  # the default outcome retention
HOUR_CHOICES = (1, 6, 24, 168, 720)
MAX_TOKEN_CHARS = 512


@bp.errorhandler(GatewayError)
def _dashboard_error(exc: GatewayError) -> Any:
    if isinstance(exc, Unauthorized) and "token" in session:
        session.pop("token")  # revoked or unknown: the cookie is of no further use
    if not wants_html():
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, Unauthorized) and request.method in ("GET", "HEAD"):
        target = request.full_path.rstrip("?")
        return redirect(url_for("dashboard_login.login_form", next=target), 303)
    return error_page(exc.status, exc.message)


for _blueprint in (bp, login_bp):
    _blueprint.after_request(security_headers)
    _blueprint.context_processor(template_globals)


# ---------------------------------------------------------------------------------------------
# Routes: the page
# ---------------------------------------------------------------------------------------------


def _hours() -> int:
    hours = ascii_number(request.values.get("hours", str(DEFAULT_HOURS)).strip(), 6)
    if hours is None or not 1 <= hours <= MAX_HOURS:
        raise InvalidInput(f"hours must be a whole number from 1 to {MAX_HOURS}")
    return hours


def _page_url(model: str | None, hours: int) -> str:
    anchor = f"#model-{model}" if model else ""
    return url_for("dashboard.dashboard", model=model, hours=hours) + anchor


def render_page(status: int = 200, only: str | None = None, error: str | None = None,
                failed: Failure | None = None) -> Any:
    """The whole page; also what a failed form re-renders, with the message and its status."""
    svc = services()
    viewer = current_viewer()
    hours = _hours()
    if only is not None:
        check_model_name(only)
    window = choose_window(hours, time.time())
    records = service.list_models(svc.db)
    names = [r["model"] for r in records]
    if only is not None:
        records = [r for r in records if r["model"] == only]
        if not records and error is None:
            status, error = 404, f"model {only!r} is not registered"
    models = [model_view(svc, r, window, failed) for r in records]
    page = render_template(
        "dashboard.html", models=models, names=names, only=only, hours=hours,
        hour_choices=HOUR_CHOICES, bucket=fmt_duration(window.axis.step), viewer=viewer,
        csrf=csrf_token(), error=error, auth=svc.settings.auth,
        since=fmt_when(window.since.isoformat()), until=fmt_when(window.until.isoformat()),
    )
    return page, status


@bp.get("/dashboard")
def dashboard() -> Any:
    return render_page(only=request.args.get("model") or None)


# ---------------------------------------------------------------------------------------------
# Routes: ops actions
# ---------------------------------------------------------------------------------------------


def _form_number(text: str) -> Any:
    """A typed number as JSON would carry it; anything else is passed on unchanged, so the
    API's own validation produces the same message as for a bad PUT."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def policy_body(form: Mapping[str, str]) -> dict[str, Any]:
    """`weight-<v>` and `shadow-<v>` fields to the API's PUT body; empty fields are left out."""
    body: dict[str, Any] = {"weights": {}, "shadow": {}}
    for key, raw in form.items():
        kind, _, ref = key.partition("-")
        value = raw.strip()
        if kind in ("weight", "shadow") and ref and value:
            body["weights" if kind == "weight" else "shadow"][ref] = _form_number(value)
    reason = form.get("reason", "").strip()
    if reason:
        body["reason"] = reason
    return body


def _reason() -> str | None:
    return check_reason(request.form.get("reason", "").strip() or None)


def _stale(name: str, exc: GatewayError, if_match: int | None) -> str | None:
    """For a conflict caused by a change made while the page was open, say so plainly."""
    if not isinstance(exc, Conflict) or if_match is None:
        return None
    try:
        live = services().traffic.show(name)["revision"]
    except GatewayError:
        return None
    if live == if_match:
        return None
    return (f"Not applied: the policy changed while this page was open (it is now at revision "
            f"{live}; the page showed {if_match}). The page now shows the live policy; check "
            "it and submit again.")


def _failure(name: str, exc: GatewayError, if_match: int | None, policy_form: bool) -> Any:
    """Re-render the page after a refused change, with the message and the refusal's status."""
    message = _stale(name, exc, if_match) or exc.message
    keep = policy_form and not isinstance(exc, Conflict)
    typed = form_from_request(request.form) if keep else None
    return render_page(exc.status, only=name, error=f"{name}: {message}",
                       failed=Failure(name, message, typed))


@bp.post("/dashboard/models/<name>/traffic")
def set_traffic(name: str) -> Any:
    require_ops()
    check_csrf()
    hours = _hours()
    if_match = parse_if_match(request.form.get("revision") or None)
    try:
        policy = services().traffic.set(name, policy_body(request.form), g.actor, if_match)
    except GatewayError as exc:
        return _failure(name, exc, if_match, policy_form=True)
    flash(f"{name}: revision {policy['revision']} is live.")
    return redirect(_page_url(name, hours), 303)


@bp.post("/dashboard/models/<name>/rollback")
def rollback(name: str) -> Any:
    require_ops()
    check_csrf()
    hours = _hours()
    if_match = parse_if_match(request.form.get("revision") or None)
    try:
        policy = services().traffic.rollback(name, g.actor, _reason(), if_match)
    except GatewayError as exc:
        return _failure(name, exc, if_match, policy_form=False)
    flash(f"{name}: rolled back; revision {policy['revision']} is live.")
    return redirect(_page_url(name, hours), 303)


# ---------------------------------------------------------------------------------------------
# Routes: login and logout (public blueprint `dashboard_login`)
# ---------------------------------------------------------------------------------------------


def _login_page(status: int = 200, error: str | None = None) -> Any:
    target = safe_next(request.values.get("next"))
    return render_template("dashboard_login.html", error=error, next=target,
                           csrf=csrf_token()), status


@login_bp.get("/dashboard/login")
def login_form() -> Any:
    return _login_page()


@login_bp.post("/dashboard/login")
def login() -> Any:
    """Check the pasted token like the auth hook would, then keep it in the session cookie."""
    try:
        check_csrf()
    except InvalidInput as exc:
        return _login_page(400, exc.message)
    token = request.form.get("token", "").strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        return _login_page(401, "paste a token (gateway token create --role analyst)")
    try:
        record = current_app.extensions["mgw_tokens"].verify(f"Bearer {token}")
    except GatewayError as exc:
        return _login_page(exc.status, exc.message)
    if record.role not in DASHBOARD_ROLES:
        return _login_page(403, f"the dashboard needs an analyst or ops token; this one has "
                                f"the {record.role} role")
    target = safe_next(request.form.get("next"))
    session.clear()  # a fresh session: nothing from before the login carries over
    session["token"] = token
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(target, 303)


@login_bp.post("/dashboard/logout")
def logout() -> Any:
    try:
        check_csrf()
    except InvalidInput as exc:
        return error_page(400, exc.message)
    session.clear()
    return redirect(url_for("dashboard_login.login_form"), 303)

"""The application factory: settings in, a Flask app over the composition root's services.

`create_app` asks `gateway.services.build_services` for the object graph, attaches it to the app
(`gateway.web.current.services` reads it back in a request), registers the error mapping
(`gateway.web.errors`), auth and the blueprints. Only `wsgi.py` and gunicorn import this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

from flask import Flask, Request, g
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from gateway.services import build_services
from gateway.serving.entry import InferenceEntry
from gateway.settings import Settings
from gateway.web import auth
from gateway.web.blueprints import (
    admin,
    analytics,
    feedback,
    health,
    lifecycle,
    openapi,
    predict,
    prometheus,
    rollouts,
    v2,
)
from gateway.web.dashboard import routes as dashboard
from gateway.web.errors import register_error_handlers


def secret_key(settings: Settings) -> bytes:
    """The key that signs the dashboard's session cookie: `GATEWAY_SECRET_KEY`, else a random
    key created once in the state directory (mode 0600) and shared by every worker."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = settings.state_dir / "secret_key"
    if path.exists():
        return path.read_bytes()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.state_dir / f".secret_key.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    with contextlib.suppress(FileExistsError):  # the first worker to link it wins
        os.link(tmp, path)
    tmp.unlink()
    return path.read_bytes()


class DashboardSessions(SecureCookieSessionInterface):
    """The signed cookie session, opened only under `/dashboard` (the one place that signs in
    with a cookie). Opening it builds an itsdangerous serializer per request, which cost more
    than routing a request; every other route gets Flask's null session."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith("/dashboard"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def create_app(settings: Settings | None = None) -> Flask:
    """Build a gateway. Tests pass their own `Settings`; `wsgi.py` reads the environment."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.secret_key = secret_key(settings)
    app.session_interface = DashboardSessions()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    svc = app.extensions["mgw"] = build_services(settings)
    register_error_handlers(app)
    auth.init_app(app, svc.tokens, settings.auth)
    # the inference routes skip Flask's request machinery (gateway.serving.entry)
    entry = app.extensions["mgw_entry"] = InferenceEntry(
        app.wsgi_app, svc.dataplane, svc.limits, settings.max_body_bytes, svc.tokens,
        settings.auth)
    app.wsgi_app = entry  # type: ignore[method-assign]

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        request_id = g.get("request_id")
        if request_id and "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = request_id
        return response

    app.register_blueprint(health.bp)
    app.register_blueprint(prometheus.bp)
    app.register_blueprint(v2.health_bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(predict.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(lifecycle.bp)
    app.register_blueprint(rollouts.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(dashboard.login_bp)
    app.register_blueprint(openapi.bp)
    return app

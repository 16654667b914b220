"""The application factory: settings in, a wired Flask app out; errors mapped in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Request, current_app, g, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from gateway.lifecycle import drift_monitor
from gateway.lifecycle.rollout import RolloutController, Rollouts
from gateway.outcomes.feedback import FeedbackDesk
from gateway.outcomes.log import OutcomeLog
from gateway.prometheus_metrics import Metrics
from gateway.serving.catalog import Catalog
from gateway.serving.codecs import Limits
from gateway.serving.dataplane import DataPlane
from gateway.serving.registry_sync import RegistryAnnouncer
from gateway.serving.request_ids import RequestIds
from gateway.serving.runtime import ModelRuntime
from gateway.serving.shadow import ShadowPool
from gateway.settings import Settings
from gateway.traffic.admin import TrafficAdmin
from gateway.traffic.sync import PolicyCache, PolicyChannel
from gateway.web import auth
from gateway.web.responses import json_response
from gateway.web.workers import RequestReceiveTimeout
from registry.db import Database
from registry.errors import GatewayError
from registry.store import ArtifactStore

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


@dataclass
class Services:
    """What the blueprints need, built once per app: no module-level mutable state."""

    settings: Settings
    db: Database
    store: ArtifactStore
    catalog: Catalog
    runtime: ModelRuntime
    dataplane: DataPlane
    limits: Limits
    redis: redis.Redis
    policies: PolicyCache
    shadows: ShadowPool
    traffic: TrafficAdmin
    outcomes: OutcomeLog
    feedback: FeedbackDesk
    metrics: Metrics
    rollouts: Rollouts
    controller: RolloutController
    announcer: RegistryAnnouncer

    def start(self) -> None:
        """Start this process's background refreshers now rather than on the first request."""
        self.catalog.ensure_started()
        self.policies.ensure_started()
        self.outcomes.start()
        self.controller.ensure_started()

    def close(self) -> None:
        """Stop background work and release sessions and connections (worker exit, tests)."""
        self.controller.stop()
        self.policies.stop()
        self.catalog.stop()
        self.shadows.stop()
        self.outcomes.close()
        self.runtime.close()
        self.redis.close()
        self.db.dispose()


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


def redis_url_for(settings: Settings) -> str:
    """The configured Redis, or the embedded one shared by this gateway's processes."""
    if settings.redis_url:
        return settings.redis_url
    from gateway.redis_embedded import EmbeddedRedis

    embedded = EmbeddedRedis(settings.state_dir)
    embedded.ensure()
    return embedded.url


def connect_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                health_check_interval=15)


def services() -> Services:
    svc: Services = current_app.extensions["mgw"]
    return svc


def error_response(status: int, code: str, message: str) -> Any:
    if request.path.startswith("/v2"):
        return json_response({"error": message}, status)
    return json_response({"error": {"code": code, "message": message}}, status)


def _register_error_handlers(app: Flask) -> None:
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
        caller may retry, so `503 unavailable`, like the token store's outage. It was a `500
        internal` with a traceback per request: 2,225 feedback and 6 policy changes in a 30 s
        restart of PostgreSQL under `bench.soak`, while predictions went on unharmed."""
        first = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
        log.warning("database unreachable on %s %s: %s", request.method, request.path[:200],
                    first[0][:200] if first else exc.__class__.__name__)
        return error_response(503, "unavailable", "the database is unreachable; retry shortly")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path[:200])
        return error_response(500, "internal", "internal error; see the gateway's log")


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
    db = Database(settings.database_url)
    store = ArtifactStore(settings.model_store)
    catalog = Catalog(db, settings.registry_poll_seconds)
    metrics = Metrics()
    runtime = ModelRuntime(store, settings.session_cache_count, settings.session_cache_bytes,
                           settings.intra_op_threads,
                           on_failure=lambda v: metrics.load_failures.labels(
                               v.model, str(v.version)).inc(),
                           batch_sizes=metrics.batch_requests)
    client = connect_redis(redis_url_for(settings))
    channel = PolicyChannel(client, settings.redis_prefix)
    policies = PolicyCache(channel, db, settings.policy_refresh_seconds,
                           on_propagated=metrics.policy_propagated)
    shadows = ShadowPool(settings.shadow_workers, settings.shadow_queue)
    outcomes = OutcomeLog(db, settings.state_dir / "spool", settings.outcome_flush_seconds,
                          max_buffer=settings.outcome_buffer, metrics=metrics)
    metrics.watch_policies(policies.all)
    announcer = RegistryAnnouncer(db, client, settings.redis_prefix)
    policies.listen(announcer.channel, announcer.receiver(catalog))
    traffic = TrafficAdmin(db, catalog, runtime, channel, policies)
    rollouts = Rollouts(db, catalog, traffic, client, settings.redis_prefix,
                        lock_seconds=max(30.0, 3 * settings.rollout_interval_seconds),
                        on_decision=lambda model, action: metrics.rollout_decisions.labels(
                            model, action).inc())
    app.extensions["mgw"] = Services(
        settings=settings, db=db, store=store, catalog=catalog, runtime=runtime,
        dataplane=DataPlane(catalog, runtime, policies, shadows, outcomes,
                            RequestIds(client, settings.redis_prefix), metrics,
                            input_sample_rate=settings.input_sample_rate),
        limits=Limits(max_batch=settings.max_batch,
                      max_elements=settings.max_tensor_elements), redis=client, policies=policies,
        shadows=shadows, traffic=traffic,
        outcomes=outcomes,
        feedback=FeedbackDesk(db, outcomes, settings.feedback_wait_seconds, metrics),
        metrics=metrics, rollouts=rollouts,
        controller=RolloutController(rollouts, settings.rollout_interval_seconds),
        announcer=announcer,
    )

    metrics.watch_drift(drift_monitor.init_app(app, db, settings).gauges)
    _register_error_handlers(app)
    auth.init_app(app, db, settings.auth, settings.token_cache_seconds)

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        request_id = g.get("request_id")
        if request_id and "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = request_id
        return response

    from gateway.web.blueprints import (
        admin,
        analytics,
        feedback,
        health,
        openapi,
        predict,
        v2,
    )
    from gateway.web.blueprints import prometheus as metrics_http
    from gateway.web.blueprints import rollouts as rollouts_http
    from gateway.web.dashboard import routes as dashboard

    app.register_blueprint(health.bp)
    app.register_blueprint(metrics_http.bp)
    app.register_blueprint(v2.health_bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(predict.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(rollouts_http.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(dashboard.login_bp)
    app.register_blueprint(openapi.bp)
    return app

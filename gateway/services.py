"""The composition root: settings in, the gateway's whole object graph out.

`build_services` is the one place that wires the registry, the artifact store, the data plane,
traffic, outcomes and the lifecycle together. The Flask app (`gateway.web.app.create_app`),
every CLI command and the tests all call it, so they run the same configured objects; nothing
else constructs them and no module imports the app to reach them.

A serving process (`background=True`) resolves its Redis (starting the embedded one when none
is configured) and starts refresh threads when `Services.start` is called. A one-shot command
(`background=False`) uses a Redis only if one is configured or a running gateway's embedded one
answers, and starts no thread: its catalog and policies are read from the database on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from gateway.agent.channel import AgentSender
from gateway.lifecycle.drift_monitor import DriftMonitor
from gateway.lifecycle.rollout import RolloutController, Rollouts
from gateway.outcomes.feedback import FeedbackDesk
from gateway.outcomes.log import OutcomeLog
from gateway.prometheus_metrics import Metrics
from gateway.serving.catalog import Catalog
from gateway.serving.codecs.tensors import Limits
from gateway.serving.dataplane import DataPlane
from gateway.serving.readiness import Readiness
from gateway.serving.registry_sync import RegistryAnnouncer
from gateway.serving.request_ids import RequestIds
from gateway.serving.runtime import ModelRuntime
from gateway.serving.shadow import ShadowPool
from gateway.serving.tokens import TokenVerifier
from gateway.settings import Settings, SettingsError
from gateway.traffic.admin import TrafficAdmin
from gateway.traffic.sync import PolicyCache, PolicyChannel
from registry.db import Database
from registry.sealing import BadKey, Keyring
from registry.store import Store
from registry.stores import open_store


@dataclass
class Services:
    """Everything the HTTP layer and the commands use, built once per process."""

    settings: Settings
    db: Database
    store: Store
    catalog: Catalog
    runtime: ModelRuntime
    dataplane: DataPlane
    limits: Limits
    redis: redis.Redis | None  # None: a command with no gateway's Redis to reach
    policies: PolicyCache
    shadows: ShadowPool
    traffic: TrafficAdmin
    outcomes: OutcomeLog
    feedback: FeedbackDesk
    metrics: Metrics
    rollouts: Rollouts
    controller: RolloutController
    announcer: RegistryAnnouncer
    drift: DriftMonitor
    readiness: Readiness
    tokens: TokenVerifier

    def start(self) -> None:
        """Start this process's background refreshers now rather than on the first request.
        Beside an agent (`gateway.agent`), the rollout controller runs there instead."""
        self.catalog.on_poll(self.tokens.refresh_stale, self.tokens.refresh_every)
        self.catalog.ensure_started()
        self.policies.ensure_started()
        self.outcomes.start()
        if self.settings.agent_socket is None:
            self.controller.ensure_started()

    def close(self) -> None:
        """Stop background work and release sessions and connections (worker exit, tests)."""
        self.controller.stop()
        self.policies.stop()
        self.catalog.stop()
        self.shadows.stop()
        self.outcomes.close()
        self.runtime.close()
        if self.redis is not None:
            self.redis.close()
        self.db.dispose()


def connect_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                health_check_interval=15)


def redis_url_for(settings: Settings, *, start: bool) -> str | None:
    """The configured Redis, or the embedded one shared by this gateway's processes: started
    if need be when `start`, else only if it already runs (None when it does not)."""
    if settings.redis_url:
        return settings.redis_url
    from gateway.redis_embedded import EmbeddedRedis

    embedded = EmbeddedRedis(settings.state_dir)
    if start:
        embedded.ensure()
    elif not embedded.alive():
        return None
    return embedded.url


def store_for(settings: Settings) -> Store:
    """The artifact store the settings name, with its keys; a malformed key stops start-up."""
    try:
        keyring = Keyring.from_settings(settings.artifact_key, settings.artifact_old_keys)
    except BadKey as exc:
        raise SettingsError(str(exc)) from None
    try:
        return open_store(settings.model_store, keyring, cache_dir=settings.model_cache,
                          cache_bytes=settings.model_cache_bytes,
                          plaintext_cache=settings.model_cache_plaintext)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def build_services(settings: Settings, *, background: bool = True) -> Services:
    """Wire the gateway for a serving process (`background`) or a one-shot command."""
    db = Database(settings.database_url)
    store = store_for(settings)
    catalog = Catalog(db, settings.registry_poll_seconds, background=background)
    metrics = Metrics()
    runtime = ModelRuntime(store, settings.session_cache_count, settings.session_cache_bytes,
                           settings.intra_op_threads,
                           on_failure=lambda v: metrics.load_failures.labels(
                               v.model, str(v.version)).inc(),
                           batch_sizes=metrics.batch_requests)
    url = redis_url_for(settings, start=background)
    client = connect_redis(url) if url else None
    channel = PolicyChannel(client, settings.redis_prefix) if client is not None else None
    policies = PolicyCache(channel, db, settings.policy_refresh_seconds,
                           on_propagated=metrics.policy_propagated)
    shadows = ShadowPool(settings.shadow_workers, settings.shadow_queue)
    agent = AgentSender(str(settings.agent_socket)) if settings.agent_socket else None
    outcomes = OutcomeLog(db, settings.state_dir / "spool", settings.outcome_flush_seconds,
                          max_buffer=settings.outcome_buffer, metrics=metrics,
                          background=background, forward=agent.send if agent else None)
    metrics.watch_policies(policies.all)
    announcer = RegistryAnnouncer(db, client, settings.redis_prefix)
    policies.listen(announcer.channel, announcer.receiver(catalog))
    traffic = TrafficAdmin(db, catalog, runtime, channel, policies if background else None)
    rollouts = Rollouts(db, catalog, traffic, client, settings.redis_prefix,
                        lock_seconds=max(30.0, 3 * settings.rollout_interval_seconds),
                        on_decision=lambda model, action: metrics.rollout_decisions.labels(
                            model, action).inc())
    drift = DriftMonitor(db, settings.drift_threshold, settings.drift_window,
                         settings.drift_refresh_seconds)
    if settings.agent_socket is not None:
        metrics.drift_from_agent()  # the agent computes it, off the serving workers
    else:
        metrics.watch_drift(drift.gauges)
    dataplane = DataPlane(catalog, runtime, policies, shadows, outcomes,
                          RequestIds(client, settings.redis_prefix), metrics,
                          input_sample_rate=settings.input_sample_rate,
                          forward_shadow=agent.send_shadow if agent else None)
    return Services(
        settings=settings, db=db, store=store, catalog=catalog, runtime=runtime,
        dataplane=dataplane,
        limits=Limits(max_batch=settings.max_batch, max_elements=settings.max_tensor_elements),
        redis=client, policies=policies, shadows=shadows, traffic=traffic, outcomes=outcomes,
        feedback=FeedbackDesk(db, outcomes, settings.feedback_wait_seconds, metrics),
        metrics=metrics, rollouts=rollouts,
        controller=RolloutController(rollouts, settings.rollout_interval_seconds),
        announcer=announcer, drift=drift,
        readiness=Readiness(db, client, catalog, policies, runtime, dataplane, store),
        tokens=TokenVerifier(db, settings.token_cache_seconds),
    )

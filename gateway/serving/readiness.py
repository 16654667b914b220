"""What "ready" means, in one place, for `/readyz`, `/v2/health/ready` and the V2 model routes.

A worker is ready when the registry and Redis answer and, for every model, at least one version
that traffic would reach (the policy's weighted versions, else the newest live one) is loaded in
this worker. A version is ready when it loads. The HTTP routes only translate these answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.serving.catalog import Catalog, VersionInfo
from gateway.serving.dataplane import DataPlane
from gateway.serving.runtime import ModelRuntime
from gateway.traffic.sync import PolicyCache
from registry.db import Database
from registry.errors import GatewayError
from registry.store import Store

VersionState = str  # "ok", "loading", "unknown to this worker yet" or "broken: <why>"


@dataclass(frozen=True)
class WorkerReadiness:
    ready: bool
    registry: str
    redis: str
    versions: dict[str, VersionState] = field(default_factory=dict)  # "model:version" -> state
    # reported, not required: with object storage down, versions already loaded or cached keep
    # serving, and a replica taken out of rotation for it would turn that into an outage
    artifact_store: str = "ok"

    def checks(self) -> dict[str, object]:
        return {"registry": self.registry, "redis": self.redis, "versions": self.versions,
                "artifact_store": self.artifact_store}


@dataclass(frozen=True)
class VersionReadiness:
    version: VersionInfo
    error: str | None  # None: it loads

    @property
    def ready(self) -> bool:
        return self.error is None


class Readiness:
    def __init__(self, db: Database, client: redis.Redis | None, catalog: Catalog,
                 policies: PolicyCache, runtime: ModelRuntime, dataplane: DataPlane,
                 store: Store) -> None:
        self._store = store
        self._db = db
        self._client = client
        self._catalog = catalog
        self._policies = policies
        self._runtime = runtime
        self._dataplane = dataplane

    def _registry(self) -> str:
        try:
            with self._db.read() as session:
                session.execute(text("SELECT 1"))
            return "ok"
        except SQLAlchemyError as exc:
            return f"unreachable: {exc.__class__.__name__}"

    def _redis(self) -> str:
        if self._client is None:
            return "unreachable: no Redis configured"
        try:
            self._client.ping()
            return "ok"
        except redis.RedisError as exc:
            return f"unreachable: {exc.__class__.__name__}"

    def _state(self, version: VersionInfo | None) -> VersionState:
        if version is None:
            return "unknown to this worker yet"
        if self._runtime.is_loaded(version.sha256):
            return "ok"
        if version.sha256 in self._runtime.broken:
            return f"broken: {self._runtime.broken[version.sha256][1]}"
        return "loading"

    def worker(self) -> WorkerReadiness:
        registry_state, redis_state = self._registry(), self._redis()
        versions: dict[str, VersionState] = {}
        any_ready: dict[str, bool] = {}
        policies = self._policies.all()
        for name, entry in sorted(self._catalog.snapshot.models.items()):
            policy = policies.get(name)
            routed = [v for v, _ in policy.live] if policy else (
                [entry.latest_live.version] if entry.latest_live else [])
            for number in routed:
                state = self._state(entry.versions.get(number))
                versions[f"{name}:{number}"] = state
                any_ready[name] = any_ready.get(name, False) or state == "ok"
        ready = registry_state == "ok" and redis_state == "ok" and all(any_ready.values())
        return WorkerReadiness(ready, registry_state, redis_state, versions, self._store.health())

    def version(self, model: str, ref: str | None) -> VersionReadiness:
        """The version a request would reach (pinned, or by the policy) and whether it loads;
        unknown names raise as inference does."""
        version = self._dataplane.choose(model, ref).version
        try:
            self._runtime.get(version)
        except GatewayError as exc:
            return VersionReadiness(version, exc.message)
        return VersionReadiness(version, None)

"""Changing traffic policies: validate against the registry, record in SQL, publish to Redis.

Shared by the admin API and the CLI so both refuse the same things the same way. A change is
accepted only when Redis is reachable (otherwise it could not take effect), every version exists,
is not archived, loads in onnxruntime and accepts the same inputs as the others, no version
has both a weight above 0 and a shadow, and every version given weight passes the model's
evaluation gate (`gateway.lifecycle.gate`; `force` with a reason overrides it, audited). A
rollback is exempt from the gate: the undo must always work.
"""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from gateway.lifecycle.gate import gate_failures
from gateway.serving.catalog import Catalog, ModelEntry, VersionInfo
from gateway.serving.runtime import ModelRuntime
from gateway.traffic.policy import TrafficPolicy, parse_force, parse_policy_body
from gateway.traffic.sync import PolicyCache, PolicyChannel
from registry import traffic as sql_traffic
from registry.db import Database
from registry.errors import Conflict, GatewayError, InvalidInput, NotFound, Unavailable
from registry.names import ascii_number
from registry.records import PolicyRecord

REDIS_DOWN = ("Redis is unreachable, so traffic changes are refused until it returns; requests "
              "are still served on the last policy each worker knows")
MAX_REVISION_DIGITS = 18  # a revision is a SQL BIGINT


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    revision = ascii_number(value.strip().strip('"').removeprefix("W/").strip('"'),
                            MAX_REVISION_DIGITS)
    if revision is None:
        raise InvalidInput("If-Match must be a policy revision number")
    return revision


class TrafficAdmin:
    def __init__(self, db: Database, catalog: Catalog, runtime: ModelRuntime,
                 channel: PolicyChannel | None, cache: PolicyCache | None = None) -> None:
        """`channel` None: no gateway is running (CLI, embedded Redis down); changes are
        recorded in SQL only and become live when a gateway starts and restores them."""
        self.db = db
        self.catalog = catalog
        self.runtime = runtime
        self.channel = channel
        self.cache = cache

    def show(self, model: str) -> PolicyRecord:
        try:
            self.catalog.read_model(model)  # 404 for unknown models
        except SQLAlchemyError:  # the registry is down: this worker's copy says what exists
            self.catalog.model(model)
        try:
            live = self.channel.read(model) if self.channel else None
        except redis.RedisError:
            live = self.cache.get(model) if self.cache else None
        if live is not None:
            return live.to_dict()
        try:
            stored = sql_traffic.live_policy(self.db, model)
        except SQLAlchemyError:  # the registry is down too: what this worker routes by
            held = self.cache.get(model) if self.cache else None
            stored = held.to_dict() if held is not None else None
        if stored is not None:
            stored.pop("action", None)
            return stored
        return {"model": model, "revision": 0, "weights": {}, "shadow": {}, "updated_at": None,
                "updated_by": None, "reason": None}

    def history(self, model: str, limit: int = 100) -> list[PolicyRecord]:
        return sql_traffic.history(self.db, model, limit)

    def _resolve(self, entry: ModelEntry, refs: dict[str, Any], what: str) -> dict[int, Any]:
        resolved: dict[int, Any] = {}
        for ref, value in refs.items():
            try:
                version, _ = self.catalog.read_version(entry, ref)
            except NotFound as exc:
                raise InvalidInput(f"{what}: {exc.message}") from None
            if version.version in resolved:
                raise InvalidInput(f"{what}: version {version.version} is named twice")
            resolved[version.version] = (version, value)
        return resolved

    def _check_loadable(self, versions: list[VersionInfo]) -> None:
        for version in versions:
            try:
                self.runtime.get(version)
            except GatewayError as exc:
                raise InvalidInput(f"version {version.version} fails to load: {exc.message}"
                                   ) from None
        first = versions[0]
        for version in versions[1:]:
            if version.inputs != first.inputs:
                raise InvalidInput(
                    f"versions {first.version} and {version.version} take different inputs; "
                    "a policy can only mix versions that accept the same requests"
                )

    def _publish(self, policy: PolicyRecord) -> PolicyRecord:
        if self.channel is None:
            return TrafficPolicy.from_dict(policy).to_dict()
        try:
            self.channel.publish(policy)
        except redis.RedisError:
            raise Unavailable(
                f"revision {policy['revision']} is saved in the registry but Redis is "
                "unreachable; it becomes live when Redis returns"
            ) from None
        live = TrafficPolicy.from_dict(policy)
        if self.cache is not None:
            self.cache.apply(live)
        return live.to_dict()

    def set(self, model: str, body: Any, actor: str, if_match: int | None) -> PolicyRecord:
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object with weights, shadow, reason")
        weights, shadow, reason = parse_policy_body(body)
        entry = self.catalog.read_model(model)  # archive state and aliases as of now
        if self.channel is not None and not self.channel.ping():
            raise Unavailable(REDIS_DOWN)
        primary = self._resolve(entry, weights, "weights")
        copies = self._resolve(entry, shadow, "shadow")
        # weight 0 is not primary: "v2 takes all traffic, v1 keeps a shadow copy"
        both = sorted(n for n in set(primary) & set(copies) if primary[n][1] > 0)
        if both:
            raise InvalidInput(f"version(s) {both} cannot have both a weight above 0 and a "
                               "shadow")
        self._check_loadable([v for v, _ in primary.values()] + [v for v, _ in copies.values()])
        override = self._check_gate(model, [n for n, (_, w) in primary.items() if w > 0],
                                    parse_force(body))
        stored = sql_traffic.append_revision(
            self.db, model,
            weights={str(n): w for n, (_, w) in sorted(primary.items())},
            shadow={str(n): p for n, (_, p) in sorted(copies.items())},
            actor=actor, reason=reason, if_match=if_match, gate_override=override,
        )
        return self._publish(stored)

    def _check_gate(self, model: str, weighted: list[int], force: bool
                    ) -> dict[str, Any] | None:
        """Refuse weight for versions failing the model's evaluation gate, unless forced; the
        failures a forced change overrides are returned for the audit. Shadow versions are not
        checked: a shadow is how a version is tried before it passes."""
        failures = gate_failures(self.db, model, sorted(weighted))
        if not failures:
            return None
        if not force:
            raise InvalidInput(
                f"the evaluation gate of {model!r} refuses this policy: " + "; ".join(failures)
                + ". Evaluate again, shadow the version instead, or override with force and a "
                "reason (audited)")
        return {"failures": failures, "versions": sorted(weighted)}

    def rollback(self, model: str, actor: str, reason: str | None,
                 if_match: int | None = None) -> PolicyRecord:
        entry = self.catalog.read_model(model)
        if self.channel is not None and not self.channel.ping():
            raise Unavailable(REDIS_DOWN)
        target, current = sql_traffic.rollback_target(self.db, model)
        if if_match is not None and if_match != current:
            raise Conflict(f"the policy of {model!r} is at revision {current}, not {if_match}")
        versions = []
        for ref in sorted(set(target["weights"]) | set(target["shadow"])):
            try:
                versions.append(self.catalog.read_version(entry, ref)[0])
            except NotFound as exc:
                raise Conflict(f"cannot roll back to revision {target['revision']}: "
                               f"{exc.message}") from None
        self._check_loadable(versions)
        stored = sql_traffic.append_revision(
            self.db, model, weights=target["weights"], shadow=target["shadow"], actor=actor,
            reason=reason or f"rollback to revision {target['revision']}", if_match=current,
            action="rollback",
        )
        return self._publish(stored)

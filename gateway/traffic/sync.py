"""The live traffic policies in Redis, and each worker's in-process copy of them.

Redis holds one JSON document per model (`<prefix>policy:<model>`), written whole by a Lua
script that refuses to replace a newer revision, and announces each write on a pub/sub channel.
Every worker keeps a dict of immutable `TrafficPolicy` objects, updated by a background thread
from pub/sub messages (sub-second) and by a full re-read every `refresh_seconds` (a safety net
for a missed message). The hot path reads only the dict. When Redis is unreachable the copy
stays as it was; when Redis comes back empty, the live policies are rebuilt from SQL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import orjson
import redis
from sqlalchemy.exc import SQLAlchemyError

from gateway.per_process import OncePerProcess
from gateway.traffic.policy import TrafficPolicy
from registry.db import Database
from registry.records import PolicyRecord
from registry.traffic import all_live_policies

log = logging.getLogger(__name__)

SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and tonumber(decoded['revision']) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


class PolicyChannel:
    """Reads and writes the live policies in Redis under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.models_key = f"{prefix}policies"
        self.channel = f"{prefix}policy-changes"
        self.restored_key = f"{prefix}policies-restored"
        self._set_if_newer = client.register_script(SET_IF_NEWER)

    def key(self, model: str) -> str:
        return f"{self.prefix}policy:{model}"

    def publish(self, policy: PolicyRecord) -> bool:
        """Make `policy` live unless Redis already holds a newer revision.

        `published_at` (this host's clock) lets every worker time how long the change took to
        reach it (`gateway_policy_propagation_seconds`)."""
        document = orjson.dumps({**{k: v for k, v in policy.items() if k != "action"},
                                 "published_at": time.time()})
        result = self._set_if_newer(
            keys=[self.key(policy["model"]), self.models_key, self.channel],
            args=[document, policy["revision"], policy["model"]],
        )
        return bool(result)

    def read(self, model: str) -> TrafficPolicy | None:
        raw = self.client.get(self.key(model))
        return TrafficPolicy.from_dict(orjson.loads(raw)) if raw else None

    def read_all(self) -> dict[str, TrafficPolicy]:
        models = sorted(m.decode() if isinstance(m, bytes) else m
                        for m in self.client.smembers(self.models_key))
        if not models:
            return {}
        raws = self.client.mget([self.key(m) for m in models])
        return {m: TrafficPolicy.from_dict(orjson.loads(r)) for m, r in zip(models, raws,
                                                                           strict=True) if r}

    def restore_from_sql(self, db: Database) -> int:
        """Rebuild the live policies from the registry (Redis restarted empty, or fell behind)."""
        restored = sum(self.publish(p) for p in all_live_policies(db))
        self.client.set(self.restored_key, "1")
        return restored

    def needs_restore(self) -> bool:
        return not self.client.exists(self.restored_key)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


class PolicyCache:
    """This process's copy of every live policy, kept fresh by one background thread."""

    def __init__(self, channel: PolicyChannel | None, db: Database, refresh_seconds: float = 1.0,
                 on_propagated: Callable[[TrafficPolicy], None] | None = None) -> None:
        self._on_propagated = on_propagated
        self._channel = channel
        self._db = db
        self._refresh = refresh_seconds
        self._policies: dict[str, TrafficPolicy] = {}
        self._started = OncePerProcess()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.redis_ok = False
        self.last_error: str | None = None
        self.loaded = threading.Event()
        self._handlers: dict[str, Callable[[bytes | str], None]] = {}

    def listen(self, channel: str, handler: Callable[[bytes | str], None]) -> None:
        """Also hand messages on `channel` to `handler`, on this worker's one pub/sub thread
        (in publication order with the policy changes). Call before the thread starts."""
        self._handlers[channel] = handler

    def get(self, model: str) -> TrafficPolicy | None:
        self.ensure_started()
        return self._policies.get(model)

    def all(self) -> dict[str, TrafficPolicy]:
        self.ensure_started()
        return dict(self._policies)

    def ensure_started(self) -> None:
        """Start the sync thread in this process; without a channel (a command with no
        gateway's Redis to reach) read the recorded policies from SQL once instead."""
        if not self._started.claim():
            return
        if self._channel is None:
            self._load_from_sql()
            self.loaded.set()
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy-sync", daemon=True)
        self._thread.start()
        # the first request must route by the recorded policies, not by the newest version: if
        # Redis is slow to answer (a loaded machine, a worker booting), read them from SQL now
        if not self.loaded.wait(2.0):
            log.warning("policies not read from Redis within 2 s; reading them from SQL")
            self._load_from_sql()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)

    def apply(self, policy: TrafficPolicy) -> bool:
        """Install a policy if it is newer than the one held; True when it was.

        Called directly for a policy this process just wrote (no round trip to wait for)."""
        current = self._policies.get(policy.model)
        if current is None or current.revision < policy.revision:
            self._policies = {**self._policies, policy.model: policy}
            return True
        return False

    def _received(self, policy: TrafficPolicy) -> None:
        """A change written elsewhere reached this worker: install it and report the delay."""
        if self.apply(policy) and self._on_propagated is not None and self.loaded.is_set():
            self._on_propagated(policy)

    # -- background thread -------------------------------------------------------------------

    def _read_changed(self, model: bytes | str) -> None:
        assert self._channel is not None
        name = model.decode() if isinstance(model, bytes) else model
        policy = self._channel.read(name)
        if policy is not None:
            self._received(policy)

    def _load_from_sql(self) -> None:
        """A worker that starts while Redis is down still routes by the recorded policies."""
        try:
            for stored in all_live_policies(self._db):
                self.apply(TrafficPolicy.from_dict(stored))
        except SQLAlchemyError as exc:
            log.warning("cannot read policies from the registry either: %s", exc)

    def _reload_all(self) -> None:
        assert self._channel is not None
        if self._channel.needs_restore():
            try:
                count = self._channel.restore_from_sql(self._db)
                log.info("restored %d live traffic policies from the registry", count)
            except SQLAlchemyError as exc:
                log.warning("cannot restore policies from the registry yet: %s", exc)
        for policy in self._channel.read_all().values():
            self._received(policy)
        self.loaded.set()

    def _run(self) -> None:
        assert self._channel is not None
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._channel.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel.channel, *self._handlers)
                self._reload_all()
                self.redis_ok, self.last_error, backoff = True, None, 0.1
                next_full = time.monotonic() + self._refresh
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        channel = channel.decode() if isinstance(channel, bytes) else channel
                        handler = self._handlers.get(channel)
                        if handler is not None:
                            handler(message["data"])
                        else:
                            self._read_changed(message["data"])
                    if time.monotonic() >= next_full:
                        self._reload_all()
                        next_full = time.monotonic() + self._refresh
            except redis.RedisError as exc:
                if self.redis_ok or self.last_error is None:
                    log.warning("Redis unreachable; serving the last known policies: %s", exc)
                # On losing Redis, catch up from SQL (only newer revisions are installed): a
                # change announced just before Redis died may not have been read yet, and the
                # worker would serve the old policy for the whole outage.
                if self.redis_ok or not self.loaded.is_set():
                    self._load_from_sql()
                self.redis_ok = False
                self.last_error = f"Redis unreachable: {exc.__class__.__name__}"
                self.loaded.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # never let the sync thread die; it is the only refresh path
                log.exception("policy sync failed")
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection
                        pubsub.close()

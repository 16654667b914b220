"""Registry changes announced to every worker, and the writer waiting until each has them.

A registry write (a version registered, an alias moved, a version archived, a policy changed)
commits in SQL and is then announced on Redis: `PUBLISH <prefix>registry-changes "<counter>
<model>"`, where the counter is the registry's change counter (the newest audit id) after the
write. Each worker's listener reads that one model again (or, for an announcement without a
model, reloads its whole snapshot to at least that counter) and then acknowledges it, adding
its own id to the set `<prefix>registry-ack:<counter>`. The writer answers its
caller only once as many workers as PUBLISH reached have acknowledged (or `wait_seconds` has
passed): so the next request, on any worker of any gateway sharing this Redis, resolves names,
versions and aliases as they are after the write, with nothing added to the hot path.

Acknowledgements are a set of worker ids, not a count, so two writers announcing the same
counter cannot be satisfied by one fast worker acknowledging twice. The listener runs on the
worker's one pub/sub thread (`PolicyCache.listen`), after any policy message published before
the announcement, so a traffic change is in place on every worker when its PUT answers too.

Without Redis (the CLI with no gateway running, or an outage) nothing is announced; the misses'
lookup and the catalog's poller still bring every worker up to date.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import redis

from gateway.serving.catalog import Catalog
from registry.db import Database
from registry.service import change_counter

log = logging.getLogger(__name__)

ACK_TTL_S = 60
POLL_S = 0.002


class RegistryAnnouncer:
    """Announces registry changes (writer side) and acknowledges them (worker side)."""

    def __init__(self, db: Database, client: redis.Redis | None, prefix: str,
                 wait_seconds: float = 2.0) -> None:
        self.db = db
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}registry-changes"
        self.wait_seconds = wait_seconds
        self.worker_id = uuid.uuid4().hex

    def _ack_key(self, counter: int) -> str:
        return f"{self.prefix}registry-ack:{counter}"

    def announce(self, model: str | None = None) -> int:
        """Tell every worker that `model` (None: anything) changed in the registry and wait
        until they have read it again; returns how many acknowledged. Never raises for Redis:
        the change is committed."""
        if self.client is None:
            return 0
        counter = change_counter(self.db)
        message = f"{counter} {model}" if model else str(counter)
        try:
            receivers = int(self.client.publish(self.channel, message))
            deadline = time.monotonic() + self.wait_seconds
            acked = 0
            while receivers:
                acked = int(self.client.scard(self._ack_key(counter)))
                if acked >= receivers or time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
        except redis.RedisError as exc:
            log.warning("registry change %d not announced (Redis: %s); workers will see it "
                        "on a miss or their next poll", counter, exc.__class__.__name__)
            return 0
        if acked < receivers:
            log.warning("registry change %d: %d of %d workers acknowledged within %.1f s",
                        counter, acked, receivers, self.wait_seconds)
        return acked

    def receiver(self, catalog: Catalog) -> Callable[[bytes | str], None]:
        """The worker side: read the announced model again (or reload the whole snapshot to
        the announced counter), then acknowledge."""

        def received(data: bytes | str) -> None:
            text = data.decode() if isinstance(data, bytes) else data
            head, _, model = text.partition(" ")
            try:
                counter = int(head)
            except ValueError:
                log.warning("ignoring a malformed registry announcement %r", text[:80])
                return
            done = catalog.refresh_model(model) if model else catalog.reload_to(counter)
            if not done:
                return  # the registry was unreachable: no acknowledgement, the writer waits
            assert self.client is not None
            pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self._ack_key(counter), self.worker_id)
            pipe.expire(self._ack_key(counter), ACK_TTL_S)
            pipe.execute()

        return received

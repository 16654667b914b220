"""Bearer tokens checked for a request, with a short per-process cache, and what each role may
reach. Used by the data plane's own entry (`gateway.serving.entry`) and the control plane's
auth hook (`gateway.web.auth`) alike, so both accept and refuse the same tokens the same way.

Verified tokens are cached for `token_cache_seconds`, which bounds how long a revoked token keeps
working and keeps the database off the hot path; while the database is unreachable the last
known answer stands. A serving worker renews its cached tokens before they age out, from its
catalog poller (`refresh_stale`, one query for all of them), so a request only reads the
registry for a token this worker has not seen yet, never to renew one.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from registry.db import Database
from registry.errors import Unauthorized, Unavailable
from registry.tokens import TokenRecord, load_token, load_tokens, secret_matches, split_token

# What each role may reach, by the role a blueprint asks for. `app` may give feedback, but only
# on its own requests: `gateway.outcomes.feedback` narrows it by the token's key id (`g.caller`).
ROLE_GRANTS = {
    "app": frozenset({"app", "feedback"}),
    "feedback": frozenset({"feedback"}),
    "analyst": frozenset({"analyst"}),
}
def role_allows(role: str, required: str) -> bool:
    return role == "ops" or required in ROLE_GRANTS.get(role, ())


class TokenVerifier:
    """Checks bearer tokens against the registry, with a short per-process cache."""

    def __init__(self, db: Database, ttl_seconds: float) -> None:
        self._db = db
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}
        # whole Authorization headers already verified: skips parsing and the salted hash
        self._verified: dict[str, tuple[float, TokenRecord]] = {}
        self._lock = threading.Lock()
        self.refresh_every = ttl_seconds / 3

    def _record(self, key_id: str) -> tuple[float, TokenRecord | None]:
        """(when it was read from the registry, the record or None when unknown)."""
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached
        try:
            record = load_token(self._db, key_id)
        except SQLAlchemyError:
            if cached is not None:
                return cached
            raise Unavailable("the token store is unreachable; try again shortly") from None
        with self._lock:
            if len(self._cache) > 10_000:  # unknown key ids must not grow memory without bound
                self._cache.clear()
            self._cache[key_id] = (now, record)
        return now, record

    def refresh_stale(self) -> int:
        """Read again, in one query, every cached token older than a third of the cache time
        (called that often), so requests keep finding fresh entries; a revoked or deleted
        token drops out here.
        Returns how many were read. Raises SQLAlchemyError (the caller's loop goes on)."""
        now = time.monotonic()
        stale = [k for k, (at, record) in list(self._cache.items())
                 if record is not None and now - at >= self._ttl / 3]
        if not stale:
            return 0
        fresh = load_tokens(self._db, stale)
        with self._lock:
            for key_id in stale:
                self._cache[key_id] = (now, fresh.get(key_id))
            for header, (_at, record) in list(self._verified.items()):
                if record.key_id not in fresh and record.key_id not in stale:
                    continue
                new = fresh.get(record.key_id)
                if new is None or new.revoked or new.secret_hash != record.secret_hash:
                    del self._verified[header]
                else:
                    self._verified[header] = (now, new)
        return len(stale)

    def verify(self, header: str | None) -> TokenRecord:
        if header:
            hit = self._verified.get(header)
            if hit is not None and time.monotonic() - hit[0] < self._ttl:
                return hit[1]
        read_at, record = self._verify(header)
        assert header is not None
        with self._lock:  # aged from the registry read, so revocation still lands within ttl
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[header] = (read_at, record)
        return record

    def _verify(self, header: str | None) -> tuple[float, TokenRecord]:
        if not header:
            raise Unauthorized("send Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        parts = split_token(token.strip())
        if parts is None:
            raise Unauthorized("the token is malformed")
        read_at, record = self._record(parts[0])
        if record is None or record.revoked or not secret_matches(record, parts[1]):
            raise Unauthorized("the token is unknown or revoked")
        return read_at, record

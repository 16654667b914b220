"""The worker's token cache: renewed by the catalog's poller, so a request never reads the
registry to renew a token it has seen; a revoked token still stops working within
`token_cache_seconds` (docs/security.md), on a real database."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event

from gateway.serving.catalog import Catalog
from gateway.serving.tokens import TokenVerifier
from registry.db import Database
from registry.errors import Unauthorized
from registry.tokens import create_token, revoke_token

TTL = 0.5


class StatementsBy:
    """Counts the SQL statements each thread sends (an engine event, nothing replaced)."""

    def __init__(self, db: Database) -> None:
        self.counts: dict[int, int] = {}
        self._db = db
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        ident = threading.get_ident()
        self.counts[ident] = self.counts.get(ident, 0) + 1

    def close(self) -> None:
        event.remove(self._db.engine, "before_cursor_execute", self._seen)


def verify_for(verifier: TokenVerifier, header: str, seconds: float) -> int:
    """Verify the header every 2 ms for `seconds`; how many verifications passed."""
    passed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        verifier.verify(header)
        passed += 1
        time.sleep(0.002)
    return passed


@pytest.mark.timeout(60)
def test_the_poller_renews_tokens_so_requests_never_read_the_registry(db: Database) -> None:
    header = "Bearer " + create_token(db, "app", "cache-test", "tests")
    verifier = TokenVerifier(db, TTL)
    catalog = Catalog(db, poll_seconds=0.5)
    catalog.on_poll(verifier.refresh_stale, verifier.refresh_every)
    catalog.ensure_started()  # reads the registry once, on this thread
    seen = StatementsBy(db)
    try:
        assert verifier.verify(header).role == "app"  # first sight: this thread reads it
        me = threading.get_ident()
        first = seen.counts.get(me, 0)
        assert first >= 1
        passed = verify_for(verifier, header, 4 * TTL)  # 8 cache lifetimes
        assert passed > 100
        assert seen.counts.get(me, 0) == first, "a request renewed a token itself"
        assert sum(n for t, n in seen.counts.items() if t != me) >= 6  # the poller did
        revoke_token(db, "cache-test", "tests")
        revoked_at = time.monotonic()
        with pytest.raises(Unauthorized):
            while time.monotonic() - revoked_at < 3:
                verifier.verify(header)
                time.sleep(0.005)
        assert time.monotonic() - revoked_at <= TTL + 0.3
    finally:
        catalog.stop()
        seen.close()


def test_without_the_poller_a_request_renews_after_the_cache_time(db: Database) -> None:
    """The same cache alone (a one-shot command): the request itself reads again after TTL,
    which is what the poller spares the serving workers."""
    header = "Bearer " + create_token(db, "app", "cache-alone", "tests")
    verifier = TokenVerifier(db, TTL)
    seen = StatementsBy(db)
    try:
        verifier.verify(header)
        me = threading.get_ident()
        first = seen.counts.get(me, 0)
        verify_for(verifier, header, 3 * TTL)
        assert seen.counts.get(me, 0) >= first + 2
    finally:
        seen.close()

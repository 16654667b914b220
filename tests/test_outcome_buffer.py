"""The outcome buffer is bounded (`GATEWAY_OUTCOME_BUFFER` rows per worker).

When the database is unreachable and the spool cannot be written, rows stay in memory; beyond
the bound the OLDEST are dropped, counted (`gateway_outcomes_dropped_total`) and logged, and a
request never waits for room. The databases are real and really unreachable: a SQLite file
whose directory was moved away, or a PostgreSQL database reached through a port with nothing
listening (and, for its return, a plain TCP relay to the real server started on that port).
The spool is unwritable even for root: its path is a regular file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from gateway.outcomes.log import OutcomeLog
from gateway.prometheus_metrics import Metrics
from gateway.settings import Settings, SettingsError
from gateway.web.app import create_app
from registry.db import Database
from registry.migrate import upgrade
from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database
from tests.outcome_rows import logged_ids, outcome
from tests.server import free_port


def ids(numbers: range) -> list[str]:
    return [f"r-{i:05d}" for i in numbers]


def sample(metrics: Metrics, name: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None


@pytest.fixture
def unwritable_spool(tmp_path: Path) -> Path:
    """A spool path that cannot become a directory, for any user: a regular file is there."""
    path = tmp_path / "state" / "spool"
    path.parent.mkdir()
    path.write_bytes(b"not a directory")
    return path


class TcpRelay:
    """Forwards every connection on a loopback port to a real server (the network coming
    back); `close()` stops listening and cuts the relayed connections."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_database(request: pytest.FixtureRequest, tmp_path: Path
                         ) -> Iterator[tuple[str, Callable[[], None]]]:
    """A migrated, empty database that cannot be reached, and a function that brings it back:
    SQLite whose directory was moved away (connects fail with "unable to open database file"),
    or PostgreSQL behind a port nobody listens on (connects are refused) until a relay to the
    real server starts there."""
    if request.param == "sqlite":
        home = tmp_path / "db"
        home.mkdir()
        url = f"sqlite:///{home / 'gateway.db'}"
        upgrade(url)
        away = tmp_path / "db-away"
        home.rename(away)
        yield url, lambda: away.rename(home)
        return
    admin = request.getfixturevalue("pg_server")
    real = create_pg_database(admin)
    relays: list[TcpRelay] = []
    try:
        upgrade(real)
        parsed = make_url(real)
        port = free_port()
        url = parsed.set(port=port).render_as_string(hide_password=False)
        target = (parsed.host or "127.0.0.1", parsed.port or 5432)
        yield url, lambda: relays.append(TcpRelay(port, target))
    finally:
        for relay in relays:
            relay.close()
        drop_pg_database(admin, real)


def test_outcome_buffer_setting_defaults_validates_and_reaches_the_outcome_log(
        tmp_path: Path, redis_prefix: str) -> None:
    assert Settings.from_env({}).outcome_buffer == 100_000
    assert Settings.from_env({"GATEWAY_OUTCOME_BUFFER": "250"}).outcome_buffer == 250
    with pytest.raises(SettingsError, match="GATEWAY_OUTCOME_BUFFER must be >= 1"):
        Settings.from_env({"GATEWAY_OUTCOME_BUFFER": "0"})
    with pytest.raises(SettingsError, match="GATEWAY_OUTCOME_BUFFER must be an integer"):
        Settings.from_env({"GATEWAY_OUTCOME_BUFFER": "lots"})
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, model_store=tmp_path / "store",
                              state_dir=tmp_path / "state", redis_url=REDIS_URL,
                              redis_prefix=redis_prefix, outcome_buffer=250))
    try:
        assert app.extensions["mgw"].outcomes.max_buffer == 250
    finally:
        app.extensions["mgw"].close()


def test_full_buffer_drops_the_oldest_counts_them_and_writes_the_rest_when_the_db_returns(
        unreachable_database: tuple[str, Callable[[], None]], unwritable_spool: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    url, database_returns = unreachable_database
    metrics = Metrics()
    database = Database(url)
    # no flusher thread: flushes happen when the test asks, so every count below is exact
    log = OutcomeLog(database, unwritable_spool, batch_size=20, max_buffer=50, metrics=metrics,
                     background=False)
    caplog.set_level(logging.INFO, logger="gateway.outcomes.log")
    try:
        for i in range(120):
            log.record(outcome(i))
        # the request path alone enforces the bound: the 70 oldest are gone already
        assert log.depth() == 50 and log.dropped == 70
        assert sample(metrics, "gateway_outcomes_dropped_total") == 70

        log.flush()  # the database refuses, the spool refuses: the batch goes back in front
        assert not log.db_ok and not log.spool_ok
        assert log.spool_failures == 1 and log.written == 0 and log.spooled == 0
        assert log.depth() == 50 and log.dropped == 70
        assert log.find_pending("r-00069") == []
        assert [r["request_id"] for r in log.find_pending("r-00070")] == ["r-00070"]
        assert unwritable_spool.read_bytes() == b"not a directory"
        drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
        assert len(drops) == 1 and drops[0].startswith("dropped 70 outcomes (70 since start)")
        assert "GATEWAY_OUTCOME_BUFFER" in drops[0]

        for i in range(120, 125):  # five more: the five oldest kept rows make room
            log.record(outcome(i))
        log.flush()
        assert log.depth() == 50 and log.dropped == 75 and log.spool_failures == 2
        assert sample(metrics, "gateway_outcomes_dropped_total") == 75
        assert sample(metrics, "gateway_outcome_spool_failures_total") == 2

        database_returns()
        log.flush()
        assert log.db_ok and log.depth() == 0 and log.written == 50 and log.dropped == 75
        assert logged_ids(url) == ids(range(75, 125))  # the newest 50, each once
        assert sample(metrics, "gateway_outcome_queue_depth") == 0
    finally:
        log.close()
        database.dispose()


def test_a_batch_that_finds_no_home_is_trimmed_oldest_first(
        unwritable_spool: Path, tmp_path: Path) -> None:
    """Rows the flusher held while the buffer refilled are older than the buffer's: when the
    batch goes back, they are the ones beyond the bound."""
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'gateway.db'}"  # its directory never exists
    metrics = Metrics()
    database = Database(url)
    log = OutcomeLog(database, unwritable_spool, batch_size=30, max_buffer=40, metrics=metrics,
                     background=False)
    try:
        for i in range(40):
            log.record(outcome(i))
        held = log._take()  # what the flusher has in hand while requests keep coming
        assert [r["request_id"] for r in held] == ids(range(30))
        for i in range(40, 70):
            log.record(outcome(i))  # 10 + 30 = 40 in the buffer: no drop yet
        assert log.dropped == 0
        assert log._write(held) is False  # database and spool refuse; the 30 go back
        assert log.depth() == 40 and log.dropped == 30
        assert sample(metrics, "gateway_outcomes_dropped_total") == 30
        assert [r["request_id"] for r in log._take()] == ids(range(30, 60))
    finally:
        log.close()
        database.dispose()


def test_record_never_waits_while_the_flusher_hangs_on_the_database(
        unwritable_spool: Path) -> None:
    """A database that accepts TCP connections and never answers (a hung server, a network
    black hole): the flusher is stuck in connect for 2 s at a time, requests are not."""
    hole = socket.create_server(("127.0.0.1", 0), backlog=64)  # never accept()ed
    port = hole.getsockname()[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/gateway?connect_timeout=2"
    metrics = Metrics()
    database = Database(url)
    log = OutcomeLog(database, unwritable_spool, flush_seconds=3600, batch_size=1000,
                     max_buffer=1000, metrics=metrics)
    try:
        for i in range(1000):
            log.record(outcome(i))  # the last one fills the buffer and wakes the flusher
        deadline = time.monotonic() + 5
        while log.depth() == 1000:  # the flusher took the batch and is now in connect()
            assert time.monotonic() < deadline, "the flusher never took the batch"
            time.sleep(0.005)
        started = time.monotonic()
        slowest = 0.0
        for i in range(1000, 6000):
            before = time.perf_counter()
            log.record(outcome(i))
            slowest = max(slowest, time.perf_counter() - before)
        took = time.monotonic() - started
        assert log.spool_failures == 0, "the flusher was not stuck during the measurement"
        assert took < 1.0 and slowest < 0.05, (took, slowest)
        print(f"5000 records in {took * 1000:.0f} ms while the flusher hung; slowest "
              f"{slowest * 1e6:.0f} µs")
        # the buffer is at its bound; the flusher holds one batch more (the README's "plus
        # one batch in flight")
        assert log.depth() == 1000
    finally:
        log.close()  # waits for the hung attempts to time out, tries once more, stops
        database.dispose()
        hole.close()
    # nothing written, nothing spooled: every row is either still held or counted as dropped
    assert log.written == 0 and log.spooled == 0 and log.spool_failures >= 2
    assert log.depth() == 1000 and log.dropped == 5000
    assert sample(metrics, "gateway_outcomes_dropped_total") == 5000
    assert [r["request_id"] for r in log.find_pending("r-05000")] == ["r-05000"]
    assert log.find_pending("r-04999") == []


def test_a_batch_being_written_is_still_found_for_feedback(tmp_path: Path) -> None:
    """Between the flusher taking a batch and the database having it, the rows are in neither
    place; feedback arriving then must still find them (it used to answer 404)."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    database = Database(url)
    log = OutcomeLog(database, tmp_path / "spool", background=False)
    log.record(outcome(7))
    blocker = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # a real writer holds the lock: the insert must wait
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    try:
        deadline = time.monotonic() + 10
        while log.depth() and time.monotonic() < deadline:  # taken from the buffer
            time.sleep(0.01)
        assert log.depth() == 0 and flusher.is_alive()
        assert logged_ids(url) == []  # not in the database yet
        found = log.find_pending("r-00007")
        assert [(r["request_id"], r["predicted_label"]) for r in found] == [("r-00007", 7)]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        flusher.join(30)
    assert logged_ids(url) == ["r-00007"] and log.find_pending("r-00007") == []
    database.dispose()

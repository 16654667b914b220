"""PostgreSQL stopped for 60 s under load, on a private cluster this test creates and removes.

The machine's shared cluster on 127.0.0.1:5432 is never touched: other test runs use it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.settings import Settings
from registry.db import Database
from registry.migrate import upgrade
from tests.conftest import create_pg_database, server_env
from tests.faults.load import Load, primary_counts, wait_for
from tests.faults.pg_private import PrivatePostgres, private_postgres, unavailable_reason
from tests.server import gateway_server

OUTAGE_S = 60.0
RECOVERY_BOUND_S = 30.0  # every outcome in the database this long after the load stops


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    reason = unavailable_reason()
    if reason is not None:  # fail, not skip: CI must not pass without the outage test
        pytest.fail(f"a private PostgreSQL cluster is needed for this test: {reason}")
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture
def database_url(private_pg: PrivatePostgres) -> str:
    """Overrides the conftest fixture: the registry lives in the private cluster, so every
    fixture built on it (settings, db, digits, role_tokens) uses that cluster too."""
    url = create_pg_database(private_pg.admin_url)
    upgrade(url)
    return url


def get(base: str, path: str, token: str) -> tuple[int, Any]:
    status, body, _ = get_with_warning(base, path, token)
    return status, body


def get_with_warning(base: str, path: str, token: str) -> tuple[int, Any, str | None]:
    """Status, JSON body and the `Warning` header (set when a worker answers from its copy)."""
    request = urllib.request.Request(f"{base}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (response.status, orjson.loads(response.read()),
                    response.headers.get("Warning"))
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), exc.headers.get("Warning")


READS = ("/admin/models", "/v2/models/digits", "/v2/models/digits/versions/1")


@pytest.mark.timeout(240)
def test_postgres_stopped_for_60s_under_load(settings: Settings, digits: dict[str, Any],
                                             db: Database, role_tokens: dict[str, str],
                                             tmp_path: Path, private_pg: PrivatePostgres
                                             ) -> None:
    """Expectation: while the registry's PostgreSQL is stopped (`pg_ctl stop -m fast`) for
    60 s, 4 clients sending /predict (2 with an app token, 2 with an ops token) see no
    failure at all, and the workers keep answering registry reads (GET /admin/models,
    /v2/models/digits and a version's metadata) with 200 and the same body as before the
    outage, from what they already hold (GET /admin/models says so in a `Warning` header).
    Outcomes are spooled meanwhile, and after the restart, with the gateway still running,
    every answered request id is in the outcome table, exactly once, within 30 s of the load
    stopping.

    Why: the database is the registry's record, not part of the request path; a database
    failover or restart must not take inference down, nor lose what it served."""
    ops, app = role_tokens["ops"], role_tokens["app"]
    tokens = {"/admin/models": ops}
    row = digits["X"][0].tolist()
    spool = settings.state_dir / "spool"
    with gateway_server(server_env(settings), workers=2, cwd=tmp_path) as base:
        # half the clients use the ops token, so that both workers have verified both
        # tokens (hundreds of times) before the outage: a worker can only vouch for a token
        # it has seen while the token store is unreachable
        with Load(base, app, row, threads=2) as load, Load(base, ops, row, threads=2) as ops_load:
            load.wait_answers(150, 60)
            ops_load.wait_answers(150, 60)
            # the reads' answers before the outage, the same on every worker
            baseline = {path: get(base, path, tokens.get(path, app)) for path in READS}
            for path in READS:
                for _ in range(20):
                    assert get(base, path, tokens.get(path, app)) == baseline[path], path
            assert all(status == 200 for status, _ in baseline.values()), baseline
            stopped_at = time.monotonic()
            private_pg.stop()
            reads: list[tuple[str, int, Any]] = []
            unmarked = 0  # /admin/models answers from a worker's copy without saying so
            database_refused = not private_pg.accepts_connections()
            spool_files = 0
            while time.monotonic() - stopped_at < OUTAGE_S:
                for path in READS:
                    status, body, warning = get_with_warning(base, path, tokens.get(path, app))
                    reads.append((path, status, body))
                    unmarked += path == "/admin/models" and not warning
                spool_files = max(spool_files, len(list(spool.glob("*.jsonl"))))
                time.sleep(1.0)
            outage_end = time.monotonic()
            during = [c for one in (load, ops_load)
                      for c in one.answered_between(stopped_at, outage_end)]
            private_pg.start()
            started_at = time.monotonic()
            time.sleep(2)
        # the load has stopped; the gateway still runs, so the outcomes must come from its
        # flushers replaying the spool, not from the flush at shutdown
        calls = load.snapshot() + ops_load.snapshot()
        answered = [c for c in calls if c.ok]
        ids = {c.request_id for c in answered if c.request_id is not None}
        logged_in = wait_for(lambda: ids <= primary_counts(db).keys(), RECOVERY_BOUND_S,
                             "every answered id in the outcome table")
        recovered_in = time.monotonic() - started_at
        spool_left = len(list(spool.glob("*.jsonl")))
    failures = [c for c in calls if not c.ok]
    bad_reads = [(path, status, body) for path, status, body in reads
                 if (status, body) != baseline[path]]
    print(f"{len(answered)} answered, {len(during)} while PostgreSQL was down for "
          f"{started_at - stopped_at:.1f} s, {len(failures)} failed; {len(reads)} registry "
          f"reads during the outage, {len(bad_reads)} not as before; up to {spool_files} "
          f"spool files; slowest call {max(c.duration for c in calls):.2f} s")
    print(f"all {len(ids)} outcomes in the database {logged_in:.2f} s after the load stopped "
          f"({recovered_in:.1f} s after the restart); {spool_left} spool files left")
    assert database_refused  # the outage was real
    assert spool_files > 0  # and the outcome log noticed it
    assert not failures, failures[:3]
    assert len(during) >= 1000, len(during)
    assert reads and not bad_reads, bad_reads[:3]
    assert unmarked == 0

    assert len(ids) == len(answered)
    counts = primary_counts(db)
    assert all(counts[rid] == 1 for rid in ids)
    assert len(counts) == len(ids)
    assert spool_left == 0, "spool files left behind"

"""`gateway serve` on SIGTERM: stops in well under 2 s when idle, and every outcome is written.

README defaults (embedded Redis started by the gateway itself) on each database kind: a few
predictions, a moment idle, SIGTERM to the `gateway serve` process, and the time until the whole
process tree is gone. The embedded `redis-server` is the server's own child; waiting for it to
disappear once kept the server alive for 10 s, and the worker threads for longer still.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from registry.tables import Outcome
from tests.conftest import server_env
from tests.faults.procs import _stat, children, gunicorn_master
from tests.server import gateway_server
from tests.test_outcomes_served import hammer

pytestmark = pytest.mark.timeout(120)

STOP_LIMIT_S = 2.0


def _gone(pids: set[int]) -> bool:
    """Every process exited (a zombie has exited; only its parent has not reaped it yet)."""
    return all((stat := _stat(pid)) is None or stat[0] == "Z" for pid in pids)


def test_sigterm_stops_an_idle_gateway_fast_and_flushes_every_outcome(
        settings, digits, role_tokens, db, tmp_path):
    env = {k: v for k, v in server_env(settings).items() if k != "GATEWAY_REDIS_URL"}
    with gateway_server(env, cwd=tmp_path) as base:
        answered: list = []
        failures: list = []
        hammer(base, role_tokens["app"], digits["X"][0].tolist(), 60, 4, answered, failures)
        assert not failures and len(answered) == 60
        master = gunicorn_master(base)
        serve = next(p for p in children(os.getpid()) if master in children(p))
        tree = {serve, master} | children(master) | children(serve)
        assert len(tree) >= 5, tree  # serve, embedded redis-server, master, two workers
        time.sleep(0.5)  # idle: nothing in flight
        started = time.monotonic()
        os.kill(serve, signal.SIGTERM)
        while not _gone(tree):
            assert time.monotonic() - started < 30, "gateway serve did not stop"
            time.sleep(0.01)
        took = time.monotonic() - started
    print(f"gateway serve stopped {took:.2f} s after SIGTERM")
    assert took < STOP_LIMIT_S, f"stopping took {took:.2f} s"
    with db.read() as session:
        logged = session.scalar(select(func.count()).select_from(Outcome))
    assert logged == 60

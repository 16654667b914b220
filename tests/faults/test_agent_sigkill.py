"""The agent SIGKILLed under load: no request fails, outcome loss is bounded, it comes back.

README, "The agent": a SIGKILL of the agent loses the rows it holds, at most those answered in
the last flush interval (0.2 s) plus what sat in the socket's queue; rows sent while it is down
are refused by the socket and kept by the workers, and `gateway serve` restarts it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import Settings
from registry.db import Database
from tests.conftest import server_env
from tests.faults.load import Load, primary_counts, wait_for
from tests.faults.procs import children, cmdline, serve_process
from tests.server import gateway_server

SIGKILL_BOUND_S = 1.0  # the flush interval, a batch in flight and the socket's queue
CLIENT_LAG_S = 0.5  # see test_worker_sigkill.py


def agent_pids(serve: int) -> set[int]:
    return {pid for pid in children(serve) if "gateway.agent.main" in " ".join(cmdline(pid))}


@pytest.mark.timeout(150)
def test_sigkilled_agent_loses_a_bounded_few_outcomes_and_comes_back(
        settings: Settings, digits: dict[str, Any], db: Database, role_tokens: dict[str, str],
        tmp_path: Path) -> None:
    row = digits["X"][0].tolist()
    with gateway_server(server_env(settings), workers=2, cwd=tmp_path) as base:
        serve = serve_process(base)
        (agent,) = agent_pids(serve)
        with Load(base, role_tokens["app"], row, threads=4) as load:
            load.wait_answers(400, 60)
            killed_at = time.monotonic()
            os.kill(agent, signal.SIGKILL)
            back_in = wait_for(lambda: len(agent_pids(serve) - {agent}) == 1, 30,
                               "a new agent")
            load.wait_answers(400, 60)
            time.sleep(0.5)
        calls = load.snapshot()
        (new_agent,) = agent_pids(serve)
        assert new_agent != agent

    answered = [c for c in calls if c.ok]
    failures = [c for c in calls if not c.ok]
    print(f"{len(answered)} answered, {len(failures)} failed; agent {agent} replaced by "
          f"{new_agent} in {back_in:.2f} s")
    assert not failures, failures[:3]  # the agent is off the request path
    ids = {c.request_id for c in answered}
    must_have = {c.request_id for c in answered if c.finished > killed_at + CLIENT_LAG_S}
    wait_for(lambda: must_have <= primary_counts(db).keys(), 15,
             "every outcome answered after the kill")
    counts = primary_counts(db)
    lost = [c for c in answered if c.request_id not in counts]
    oldest = max((killed_at - c.finished for c in lost), default=0.0)
    print(f"{len(lost)} of {len(answered)} outcomes lost to the agent's SIGKILL, all answered "
          f"within {oldest:.3f} s before it")
    assert all(-CLIENT_LAG_S <= killed_at - c.finished <= SIGKILL_BOUND_S for c in lost), \
        [(c.request_id, round(killed_at - c.finished, 3)) for c in lost[:5]]
    assert all(counts[rid] == 1 for rid in ids if rid in counts)

"""Redis SIGKILLed under load and restarted empty, with a private redis-server."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.settings import Settings
from registry.db import Database
from tests.conftest import server_env
from tests.faults.load import Load, primary_counts, wait_for
from tests.redis_server import PrivateRedis
from tests.server import gateway_server

OUTAGE_S = 10.0


@pytest.fixture
def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the Redis outage does not depend on the registry database; run it once")


def call(base: str, method: str, path: str, token: str,
         body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=orjson.dumps(body) if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.mark.timeout(150)
def test_redis_killed_and_restarted_empty_under_load(settings: Settings, digits: dict[str, Any],
                                                     db: Database, role_tokens: dict[str, str],
                                                     tmp_path: Path, sqlite_only: None) -> None:
    """Expectation: with 4 clients sending /predict (each with its own X-Request-Id, so every
    request also claims its id in Redis), SIGKILLing Redis for 10 s and restarting it empty changes
    nothing a client can see: no 5xx and no failed request, before, during or after the
    outage, and every answer comes from version 2, the only version of the last policy. The
    policy (same revision, same weights) is back in Redis within 10 s of the restart, rebuilt
    from SQL, and a policy change is accepted again. Outcomes never go through Redis, so every
    answered request id is in the outcome table afterwards, exactly once.

    Why: Redis holds only the live copy of the policies; SQL is the record. Losing Redis must
    cost the ability to change traffic (503), never the ability to serve or log it."""
    private = PrivateRedis().start()
    ops, app = role_tokens["ops"], role_tokens["app"]
    row = digits["X"][0].tolist()
    env = {**server_env(settings), "GATEWAY_REDIS_URL": private.url}
    key = f"{settings.redis_prefix}policy:digits"
    try:
        with gateway_server(env, cwd=tmp_path) as base:
            status, policy = call(base, "PUT", "/admin/models/digits/traffic", ops,
                                  {"weights": {"2": 100}, "reason": "before the outage"})
            assert status == 200, policy
            time.sleep(1.5)  # past one full re-read: both workers hold revision 1
            with Load(base, app, row, threads=4, caller_ids=True) as load:
                load.wait_answers(200, 60)
                killed_at = time.monotonic()
                private.kill()
                load.wait_answers(200, 60)  # the load goes on with Redis gone
                time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
                status, body = call(base, "PUT", "/admin/models/digits/traffic", ops,
                                    {"weights": {"1": 100}, "reason": "while Redis is down"})
                assert status == 503 and "Redis" in body["error"]["message"], body
                restarted_at = time.monotonic()
                private.start()  # same port, empty
                client = redis.Redis.from_url(private.url)
                took = wait_for(lambda: client.get(key) is not None, 10,
                                "the policy restored from SQL into Redis")
                restored = orjson.loads(client.get(key) or b"{}")
                client.close()
                load.wait_answers(200, 60)
                time.sleep(2)
            calls = load.snapshot()
            answered = [c for c in calls if c.ok]
            during = load.answered_between(killed_at, restarted_at)
            failures = [c for c in calls if not c.ok]
            versions = {c.version for c in answered}
            slowest = max(c.duration for c in calls)
            print(f"{len(answered)} answered, {len(during)} while Redis was down "
                  f"({restarted_at - killed_at:.1f} s), {len(failures)} failed; versions "
                  f"{sorted(v for v in versions if v is not None)}; policy restored "
                  f"{took:.2f} s after the restart; slowest call {slowest:.2f} s")
            assert not failures, failures[:3]
            assert versions == {2}, versions
            assert len(during) >= 200, len(during)
            assert restored["weights"] == {"2": 100} and restored["revision"] == policy["revision"]
            status, body = call(base, "PUT", "/admin/models/digits/traffic", ops,
                                {"weights": {"1": 100}, "reason": "after the outage"})
            assert status == 200 and body["revision"] == policy["revision"] + 1, body

            ids = {c.request_id for c in answered if c.request_id is not None}
            assert len(ids) == len(answered)  # one id per request, as sent
            logged_in = wait_for(lambda: ids <= primary_counts(db).keys(), 15,
                                 "every answered id in the outcome table")
            counts = primary_counts(db)
            print(f"all {len(ids)} outcomes logged {logged_in:.2f} s after the load stopped")
            assert all(counts[rid] == 1 for rid in ids)
            assert len(counts) == len(ids)  # and nothing else was logged as primary
    finally:
        private.kill()

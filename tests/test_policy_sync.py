"""A worker's policy copy when Redis dies: it must end up on the newest revision recorded in
SQL, also for a change it was told about but could not read before Redis went away."""

from __future__ import annotations

import time

import pytest

from gateway.traffic.sync import PolicyCache, PolicyChannel
from registry import traffic as sql_traffic
from tests.redis_server import PrivateRedis


@pytest.fixture
def private_redis():
    server = PrivateRedis().start()
    yield server
    server.kill()


def test_losing_redis_catches_up_from_sql(db, digits, private_redis, redis_prefix):
    import redis

    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    channel = PolicyChannel(client, redis_prefix)
    first = sql_traffic.append_revision(db, "digits", {"2": 100}, {}, "t", "first", None)
    channel.publish(first)
    cache = PolicyCache(channel, db, refresh_seconds=60)
    try:
        cache.ensure_started()
        assert cache.get("digits").revision == first["revision"]
        # a change recorded in SQL whose Redis copy this worker never read (as when Redis dies
        # between the notification and the read)
        second = sql_traffic.append_revision(db, "digits", {"1": 100}, {}, "t", "second", None)
        assert cache.get("digits").revision == first["revision"]
        private_redis.kill()
        deadline = time.monotonic() + 10
        while cache.redis_ok:
            assert time.monotonic() < deadline, "the outage was never noticed"
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while cache.get("digits").revision != second["revision"]:
            assert time.monotonic() < deadline, "the worker kept an older revision than SQL's"
            time.sleep(0.05)
        assert cache.get("digits").weights == ((1, 100),)
    finally:
        cache.stop()
        client.close()

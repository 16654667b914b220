"""/metrics under two gunicorn workers, and /readyz saying why it is not ready."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.conftest import server_env
from tests.server import gateway_server
from tests.test_outcomes_served import hammer

pytestmark = pytest.mark.timeout(300)


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def total(text: str, name: str, **labels: str) -> float:
    value = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            value += float(line.rsplit(" ", 1)[1])
    return value


def test_counters_add_up_across_two_workers(settings, digits, role_tokens, tmp_path,
                                            database_url, ops):
    if not database_url.startswith("sqlite"):
        pytest.skip("metrics do not depend on the database kind")
    from tests.test_routing_served import call

    with gateway_server(server_env(settings), cwd=tmp_path) as base:
        assert call(base, "PUT", "/admin/models/digits/traffic", role_tokens["ops"],
                    {"weights": {"1": 50, "3": 50}, "shadow": {"2": 100},
                     "reason": "metrics"})[0] == 200
        answered: list = []
        failures: list = []
        hammer(base, role_tokens["app"], digits["X"][0].tolist(), 400, 8, answered, failures)
        assert not failures
        for _ in range(40):  # scrapes land on either worker: each must report the sum
            text = scrape(base)
            assert total(text, "gateway_requests_total", model="digits", kind="primary") == 400
        assert total(text, "gateway_request_latency_seconds_count", model="digits") == 400
        by_version = {v: total(text, "gateway_requests_total", version=v, kind="primary")
                      for v in ("1", "3")}
        assert sum(by_version.values()) == 400 and all(n > 100 for n in by_version.values())
        shadow = total(text, "gateway_shadow_runs_total", version="2")
        dropped = total(text, "gateway_shadow_dropped_total", model="digits")
        assert shadow + dropped <= 400 and shadow > 0
        assert 'gateway_policy_weight{model="digits",version="1"} 50.0' in text
        assert 'gateway_policy_revision{model="digits"} 1.0' in text
        assert "gateway_outcome_queue_depth" in text and "gateway_outcome_flush_lag_seconds" in text


def test_a_second_gateway_in_the_same_directory_leaves_the_first_ones_counters(
        settings, digits, role_tokens, tmp_path, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("metrics do not depend on the database kind")
    env = server_env(settings)
    row = digits["X"][0].tolist()
    metrics_root = settings.state_dir / "metrics"
    # a directory left by a gateway that was killed (pid 2**22 + 1 is above Linux's pid_max)
    stale = metrics_root / f"{2**22 + 1}-123"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"stale")
    with gateway_server(env, cwd=tmp_path) as first:
        assert not stale.exists(), "a dead gateway's directory was not cleaned up"
        answered: list = []
        failures: list = []
        hammer(first, role_tokens["app"], row, 40, 4, answered, failures)
        assert not failures
        with gateway_server(env, cwd=tmp_path) as second:
            assert len([d for d in metrics_root.iterdir() if d.is_dir()]) == 2
            hammer(first, role_tokens["app"], row, 40, 4, answered, failures)
            hammer(second, role_tokens["app"], row, 20, 4, answered, failures)
            assert not failures
            for _ in range(10):  # either worker of each gateway
                assert total(scrape(first), "gateway_requests_total", model="digits") == 80
                assert total(scrape(second), "gateway_requests_total", model="digits") == 20
        # the second stopped and removed only its own directory
        assert total(scrape(first), "gateway_requests_total", model="digits") == 80
        assert len([d for d in metrics_root.iterdir() if d.is_dir()]) == 1
    assert not [d for d in metrics_root.iterdir() if d.is_dir()]


def test_readyz_names_what_is_missing(client, digits, settings, ops):
    import time

    deadline = time.monotonic() + 10
    while True:
        body = client.get("/readyz").get_json()
        if body["ready"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["ready"] is True and body["checks"]["versions"] == {"digits:3": "ok"}
    client.put("/admin/models/digits/traffic", json={"weights": {"1": 50, "2": 50}},
               headers=ops)
    body = client.get("/readyz").get_json()
    assert set(body["checks"]["versions"]) == {"digits:1", "digits:2"}

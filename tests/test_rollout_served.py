"""The rollout controller acting on its own inside `gateway serve`: nobody calls it; the test
only sends predictions and their ground truth, as applications would."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry import service
from registry.store import ArtifactStore
from tests.conftest import server_env
from tests.onnx_factory import weakened_digits_model
from tests.server import gateway_server
from tests.test_routing_served import call


@pytest.fixture
def postgres_only(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("served once, on the production database; the in-process rollout tests "
                    "cover SQLite")


def test_the_controller_rolls_a_worse_candidate_back_by_itself(
        settings, db, digits, role_tokens, tmp_path, postgres_only):
    weak = service.register_version(db, ArtifactStore(settings.model_store), "digits",
                                    weakened_digits_model(), None, "t",
                                    settings.max_model_bytes)["version"]
    ops, app = role_tokens["ops"], role_tokens["app"]
    X, y = digits["X"], digits["y"]
    rng = np.random.default_rng(3)
    env = {**server_env(settings), "GATEWAY_ROLLOUT_INTERVAL": "0.3"}
    with gateway_server(env, cwd=tmp_path) as base:
        assert call(base, "PUT", "/admin/models/digits/traffic", ops,
                    {"weights": {"3": 100}, "reason": "mlp serves"})[0] == 200
        status, started = call(base, "POST", "/admin/models/digits/rollout", ops,
                               {"candidate": weak, "min_samples": 100})
        assert status == 201, started
        deadline = time.monotonic() + 90
        state = "running"
        while state == "running":
            assert time.monotonic() < deadline, "the controller never decided"
            items = []
            for i in rng.integers(0, len(X), 100):
                code, body = call(base, "POST", "/predict", app,
                                  {"model": "digits", "inputs": [X[i].tolist()]})
                assert code == 200, body
                items.append({"request_id": body["request_id"], "label": int(y[i])})
            code, body = call(base, "POST", "/feedback", app, {"items": items})
            assert code == 200 and all(item["status"] == 202 for item in body["items"]), body
            state = call(base, "GET", "/admin/models/digits/rollout", ops)[1]["state"]
        rollout = call(base, "GET", "/admin/models/digits/rollout", ops)[1]
        policy = call(base, "GET", "/admin/models/digits/traffic", ops)[1]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(
                response.read().decode())}
    decided = {s.labels["action"]: s.value for s in families["gateway_rollout_decisions"].samples
               if s.name.endswith("_total") and s.labels["model"] == "digits"}
    assert decided.get("rollback") == 1.0, decided
    assert "advance" not in decided or decided["advance"] <= 1  # at most 5% -> 25% first
    assert rollout["state"] == "rolled_back", rollout["last_decision"]
    decisions = rollout["decisions"]
    assert decisions[-1]["action"] == "rollout.rollback"
    assert decisions[-1]["actor"] == "rollout-controller"
    assert max(d["detail"].get("weight", 0) for d in decisions) < 50
    assert decisions[-1]["detail"]["difference"]["upper"] < -0.01
    assert policy["weights"] == {"3": 100} and policy["updated_by"] == "rollout-controller"

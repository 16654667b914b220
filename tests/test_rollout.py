"""Progressive rollouts on a real gateway app: real Redis, SQLite and PostgreSQL, onnxruntime.

The controller's looks are called by the test here (`Rollouts.tick`), so every step is
deterministic; tests/test_rollout_served.py shows the controller acting on its own inside
`gateway serve`.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import redis

from gateway.cli.main import main as cli_main
from registry import service
from registry.store import ArtifactStore
from tests.conftest import REDIS_URL, bearer, error_of
from tests.onnx_factory import weakened_digits_model
from tests.test_dashboard import login, page


@pytest.fixture
def settings(settings):
    return settings.with_(feedback_wait_seconds=0.3)


@pytest.fixture
def app_headers(role_tokens):
    return bearer(role_tokens["app"])


@pytest.fixture
def weakened(settings, db, digits):
    """Version 4: a deliberately weakened digits model."""
    record = service.register_version(db, ArtifactStore(settings.model_store), "digits",
                                      weakened_digits_model(), {"description": "weakened"},
                                      "tests", settings.max_model_bytes)
    return record["version"]


def set_policy(client, ops, weights, reason="setup"):
    response = client.put("/admin/models/digits/traffic",
                          json={"weights": weights, "reason": reason}, headers=ops)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def drive(app, client, app_headers, X, y, n, rng):
    """n routed predictions, each labelled with the truth; returns (version, correct) pairs."""
    served, items = [], []
    for i in rng.integers(0, len(X), n):
        response = client.post("/predict", json={"model": "digits", "inputs": [X[i].tolist()]},
                               headers=app_headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        served.append((body["version"], body["outputs"]["label"][0] == int(y[i])))
        items.append({"request_id": body["request_id"], "label": int(y[i])})
    app.extensions["mgw"].outcomes.flush()
    response = client.post("/feedback", json={"items": items}, headers=app_headers)
    assert [item["status"] for item in response.get_json()["items"]] == [202] * n
    return served


def run_until_done(app, client, app_headers, digits, rounds, per_round, seed=0):
    rollouts = app.extensions["mgw"].rollouts
    rng = np.random.default_rng(seed)
    served, decisions = [], []
    for _ in range(rounds):
        served += drive(app, client, app_headers, digits["X"], digits["y"], per_round, rng)
        decision = rollouts.tick("digits")
        assert decision is not None
        decisions.append(decision)
        if decision.action in ("complete", "rollback"):
            break
    return served, decisions


def test_a_better_candidate_is_promoted_step_by_step_to_all_traffic(
        app, client, digits, ops, app_headers):
    set_policy(client, ops, {"1": 100})  # logreg serves; the MLP is better
    client.put("/admin/models/digits/aliases/champion", json={"version": 1}, headers=ops)
    response = client.post("/admin/models/digits/rollout", headers=ops, json={
        "candidate": 3, "steps": [5, 25, 50, 100], "min_samples": 30, "reason": "mlp"})
    assert response.status_code == 201, response.get_json()
    started = response.get_json()
    assert (started["state"], started["weight"], started["baseline"]) == ("running", 5, 1)
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "1": 95, "3": 5}

    served, decisions = run_until_done(app, client, app_headers, digits, 40, 150)
    assert decisions[-1].action == "complete", [d.reason for d in decisions]
    assert [d.numbers["weight"] for d in decisions if d.action == "advance"] == [5, 25, 50]
    assert not any(d.action == "rollback" for d in decisions)
    # the numbers the controller decided on are those of the requests actually served
    last = decisions[-1].numbers
    mine = [correct for version, correct in served if version == 3]
    assert last["candidate"]["samples"] == len(mine)
    assert last["candidate"]["mean"] == pytest.approx(np.mean(mine))
    theirs = [correct for version, correct in served if version == 1]
    assert last["baseline"]["mean"] == pytest.approx(np.mean(theirs))

    status = client.get("/admin/models/digits/rollout", headers=ops).get_json()
    assert status["state"] == "completed" and status["finished_at"]
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "3": 100}
    record = client.get("/admin/models/digits/versions/champion", headers=ops).get_json()
    assert record["version"] == 3
    actions = [d["action"] for d in status["decisions"]]
    assert actions[0] == "rollout.start" and actions[-1] == "rollout.complete"
    assert actions.count("rollout.advance") == 3
    advance = next(d for d in status["decisions"] if d["action"] == "rollout.advance")
    assert advance["actor"] == "rollout-controller"
    assert {"difference", "candidate", "baseline", "step_samples"} <= set(advance["detail"])


def test_a_worse_candidate_is_rolled_back_on_its_own_before_half_the_traffic(
        app, client, digits, weakened, ops, app_headers, role_tokens):
    before = set_policy(client, ops, {"3": 100})
    response = client.post("/admin/models/digits/rollout", headers=ops, json={
        "candidate": weakened, "steps": [5, 25, 50, 100], "min_samples": 100})
    assert response.status_code == 201, response.get_json()

    served, decisions = run_until_done(app, client, app_headers, digits, 40, 150, seed=1)
    assert decisions[-1].action == "rollback", [d.reason for d in decisions]
    assert max(d.numbers["weight"] for d in decisions) < 50
    assert "worse than the baseline" in decisions[-1].reason
    assert decisions[-1].numbers["difference"]["upper"] < -0.01
    # the weakened model really is worse, measured on what it served
    assert np.mean([c for v, c in served if v == weakened]) < np.mean(
        [c for v, c in served if v == 3]) - 0.1

    policy = client.get("/admin/models/digits/traffic", headers=ops).get_json()
    assert (policy["weights"], policy["shadow"]) == (before["weights"], before["shadow"])
    assert policy["updated_by"] == "rollout-controller"
    status = client.get("/admin/models/digits/rollout", headers=ops).get_json()
    assert status["state"] == "rolled_back"
    assert status["decisions"][-1]["action"] == "rollout.rollback"
    # a finished rollout is not looked at again
    assert app.extensions["mgw"].rollouts.tick("digits") is None

    # and the dashboard shows the decisions with their numbers
    login(client, role_tokens["analyst"])
    html = page(client)
    panel = re.search(r'<div class="rollout" data-rollout="digits" data-state="rolled_back">'
                      r'.*?</div>', html, re.S)
    assert panel, "no rollout panel"
    rows = re.findall(r'<tr data-decision="(\w+)">', panel.group(0))
    assert rows[0] == "rollback" and rows[-1] == "start"
    upper = decisions[-1].numbers["difference"]["upper"]
    assert f"{upper:+.4f}]" in panel.group(0)


def test_pause_resume_abort_and_one_rollout_at_a_time(app, client, digits, ops, app_headers):
    set_policy(client, ops, {"1": 80, "2": 20})
    start = {"candidate": 3, "min_samples": 10}
    assert client.get("/admin/models/digits/rollout", headers=ops).status_code == 404
    assert client.post("/admin/models/digits/rollout", json=start, headers=ops
                       ).status_code == 201
    again = client.post("/admin/models/digits/rollout", json=start, headers=ops)
    assert again.status_code == 409 and "already has a running rollout" in error_of(
        again)["message"]
    # the baseline is what served most
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "1": 95, "3": 5}

    paused = client.post("/admin/models/digits/rollout/pause", json={"reason": "lunch"},
                         headers=ops)
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    drive(app, client, app_headers, digits["X"], digits["y"], 300, np.random.default_rng(2))
    assert app.extensions["mgw"].rollouts.tick("digits") is None  # paused: no look acts
    assert client.post("/admin/models/digits/rollout/pause", headers=ops).status_code == 409

    # while paused, ops move traffic by hand; resuming re-applies the step over it
    set_policy(client, ops, {"1": 100}, reason="by hand")
    resumed = client.post("/admin/models/digits/rollout/resume", headers=ops)
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "running"
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "1": 95, "3": 5}

    aborted = client.post("/admin/models/digits/rollout/abort", json={"reason": "changed mind"},
                          headers=ops)
    assert aborted.status_code == 200 and aborted.get_json()["state"] == "aborted"
    policy = client.get("/admin/models/digits/traffic", headers=ops).get_json()
    assert policy["weights"] == {"1": 80, "2": 20}  # the policy from before the rollout
    assert client.post("/admin/models/digits/rollout/abort", headers=ops).status_code == 409
    actions = [d["action"] for d in client.get("/admin/models/digits/rollout",
                                               headers=ops).get_json()["decisions"]]
    assert actions == ["rollout.start", "rollout.pause", "rollout.resume", "rollout.abort"]


def test_a_hand_made_policy_change_pauses_the_rollout_instead_of_being_overwritten(
        app, client, digits, ops):
    set_policy(client, ops, {"1": 100})
    client.post("/admin/models/digits/rollout", json={"candidate": 3, "min_samples": 10},
                headers=ops)
    set_policy(client, ops, {"2": 100}, reason="incident: pin the forest")
    decision = app.extensions["mgw"].rollouts.tick("digits")
    assert decision is not None and decision.action == "pause"
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "2": 100}
    assert client.get("/admin/models/digits/rollout", headers=ops).get_json()["state"] == (
        "paused")


def test_only_the_lock_holder_looks(app, client, digits, ops, settings):
    set_policy(client, ops, {"1": 100})
    client.post("/admin/models/digits/rollout", json={"candidate": 3, "min_samples": 10},
                headers=ops)
    other = redis.Redis.from_url(REDIS_URL)
    lock = other.lock(f"{settings.redis_prefix}rollout-lock:digits", timeout=30)
    assert lock.acquire(blocking=False)
    app.extensions["mgw"].rollouts.ops_lock_wait = 0.3
    try:
        assert app.extensions["mgw"].rollouts.tick("digits") is None
        # ops changes wait for the lock briefly, then give up with a conflict
        response = client.post("/admin/models/digits/rollout/pause", headers=ops)
        assert response.status_code == 409
    finally:
        lock.release()
        other.close()
    assert app.extensions["mgw"].rollouts.tick("digits").action == "wait"


@pytest.mark.parametrize("body, status, message", [
    ({"candidate": 9}, 400, "no version or alias 9"),
    ({"candidate": 1}, 400, "is the baseline"),
    ({"candidate": 3, "baseline": "nope"}, 400, "baseline"),
    ({"candidate": 3, "steps": [5, 50]}, 400, "ending at 100"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_starts_change_nothing(client, digits, ops, body, status, message):
    before = set_policy(client, ops, {"1": 100})
    response = client.post("/admin/models/digits/rollout", json=body, headers=ops)
    assert response.status_code == status
    assert message in error_of(response)["message"]
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["revision"] == (
        before["revision"])
    assert client.get("/admin/models/digits/rollout", headers=ops).status_code == 404


def test_rollout_routes_need_an_ops_token(client, digits, role_tokens):
    for role in ("app", "analyst"):
        response = client.post("/admin/models/digits/rollout", json={"candidate": 3},
                               headers=bearer(role_tokens[role]))
        assert response.status_code == 403
    assert client.get("/admin/models/digits/rollout").status_code == 401
    unknown = client.get("/admin/models/nope/rollout", headers=bearer(role_tokens["ops"]))
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "unknown_model"


def test_the_cli_starts_shows_and_aborts(app, client, digits, ops, settings, monkeypatch,
                                         capsys):
    set_policy(client, ops, {"1": 100})
    for key, value in {"GATEWAY_DATABASE_URL": settings.database_url,
                       "GATEWAY_MODEL_STORE": str(settings.model_store),
                       "GATEWAY_REDIS_URL": REDIS_URL,
                       "GATEWAY_REDIS_PREFIX": settings.redis_prefix}.items():
        monkeypatch.setenv(key, value)
    assert cli_main(["rollout", "start", "digits", "--candidate", "3", "--steps", "10,100",
                     "--min-samples", "20", "--max-p99-ms", "250"]) == 0
    out = capsys.readouterr().out
    assert "candidate 3 at 10% (step 1 of 2: 10,100) against baseline 1" in out
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "1": 90, "3": 10}
    assert cli_main(["rollout", "status", "digits"]) == 0
    assert "rollout.start" in capsys.readouterr().out
    assert cli_main(["rollout", "start", "digits", "--candidate", "2"]) == 2
    assert "already has a running rollout" in capsys.readouterr().err
    assert cli_main(["rollout", "start", "digits", "--candidate", "2", "--steps", "a,b"]) == 2
    assert cli_main(["rollout", "abort", "digits", "--reason", "test"]) == 0
    assert "aborted" in capsys.readouterr().out
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "1": 100}


def test_the_gate_guards_a_rollout_and_a_forced_start_keeps_its_override(
        app, client, digits, weakened, ops, app_headers, settings, db, examples_dir):
    from gateway.lifecycle.datasets import load_dataset
    from gateway.lifecycle.evaluation import evaluate
    from gateway.lifecycle.gate import normalise_rules
    from registry import evaluations

    dataset = load_dataset(examples_dir / "digits_test.npz", settings.max_model_bytes)
    store = ArtifactStore(settings.model_store)
    for version in (3, weakened):
        evaluate(db, store, "digits", version, dataset, "tests")
    evaluations.set_gate(db, "digits", normalise_rules(["accuracy >= 0.9"]), "tests", "gate")
    set_policy(client, ops, {"3": 100})

    refused = client.post("/admin/models/digits/rollout", json={"candidate": weakened},
                          headers=ops)
    assert refused.status_code == 400
    assert "accuracy >= 0.9" in error_of(refused)["message"]
    assert client.get("/admin/models/digits/rollout", headers=ops).status_code == 404

    forced = client.post("/admin/models/digits/rollout", headers=ops, json={
        "candidate": weakened, "steps": [50, 100], "min_samples": 10, "force": True,
        "reason": "try it on half anyway", "max_regression": 1.0})
    assert forced.status_code == 201, forced.get_json()
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == {
        "3": 50, str(weakened): 50}
    # the next step is forced too (ops overrode the gate for the whole rollout), and audited
    served, decisions = run_until_done(app, client, app_headers, digits, 10, 60)
    assert [d.action for d in decisions if d.action != "wait"][:1] == ["advance"]
    overrides = [e for e in service.list_audit(db, model="digits")
                 if e["action"] == "traffic.gate_override"]
    assert len(overrides) >= 2


def test_an_equal_candidate_its_own_int8_copy_goes_all_the_way_without_a_rollback(
        app, client, digits, ops, app_headers, settings, db, examples_dir):
    """The quantized MLP answers like the MLP (they disagree on a row or two of the held-out
    split), so over some 25 looks the controller must never roll it back."""
    from gateway.lifecycle.datasets import load_dataset
    from gateway.lifecycle.quantize import quantize

    dataset = load_dataset(examples_dir / "digits_test.npz", settings.max_model_bytes)
    child = quantize(db, ArtifactStore(settings.model_store), "digits", 3, "tests", dataset,
                     max_bytes=settings.max_model_bytes)["child"]["version"]
    app.extensions["mgw"].catalog.reload()
    set_policy(client, ops, {"3": 100})
    response = client.post("/admin/models/digits/rollout", headers=ops, json={
        "candidate": child, "min_samples": 40, "max_regression": 0.02})
    assert response.status_code == 201, response.get_json()
    served, decisions = run_until_done(app, client, app_headers, digits, 60, 80, seed=4)
    assert decisions[-1].action == "complete", [d.reason for d in decisions]
    assert not any(d.action == "rollback" for d in decisions)
    assert len(decisions) >= 10  # looked at many times on the way
    mine = np.mean([c for v, c in served if v == child])
    theirs = np.mean([c for v, c in served if v == 3])
    assert abs(mine - theirs) < 0.05  # the premise: they are about equal on what they served

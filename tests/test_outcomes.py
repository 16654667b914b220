"""Outcomes, feedback and the comparison, checked against independent computations."""

from __future__ import annotations

import csv
import io

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from scipy import stats

from tests.conftest import bearer, error_of


@pytest.fixture
def settings(settings):
    return settings.with_(feedback_wait_seconds=0.3, shadow_queue=1000)


@pytest.fixture
def app_headers(role_tokens):
    return {"Authorization": f"Bearer {role_tokens['app']}"}


@pytest.fixture
def analyst(role_tokens):
    return {"Authorization": f"Bearer {role_tokens['analyst']}"}


def predict(client, headers, row, **extra):
    with client.post("/predict", json={"model": "digits", "inputs": [row]},
                     headers={**headers, **extra}) as response:
        assert response.status_code == 200, response.get_json()
        return response.get_json()


def flush(app):
    services = app.extensions["mgw"]
    services.outcomes.flush()


def direct_labels(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["label"], {"input": X})[0]


def test_compare_matches_onnxruntime_and_scipy(app, client, digits, app_headers, analyst, ops):
    X, y = digits["X"], digits["y"]
    client.put("/admin/models/digits/aliases/champion", json={"version": 1}, headers=ops)
    items = []
    for version in (1, 2):
        for i in range(len(X)):
            rid = f"v{version}-{i}"
            predict(client, app_headers, X[i].tolist(),
                    **{"X-Model-Version": str(version), "X-Request-Id": rid})
            items.append({"request_id": rid, "label": int(y[i])})
    flush(app)
    for start in range(0, len(items), 1000):
        response = client.post("/feedback", json={"items": items[start:start + 1000]},
                               headers=app_headers)
        assert response.status_code == 200
        assert {i["status"] for i in response.get_json()["items"]} == {202}
    result = client.get("/analytics/models/digits/compare", headers=analyst).get_json()
    assert result["champion"] == {"version": 1, "source": "alias"}
    rows = {r["version"]: r for r in result["versions"]}
    counts = {}
    for version, example in ((1, "logreg"), (2, "forest")):
        correct = int((direct_labels(digits["paths"][example], X) == y).sum())
        counts[version] = correct
        accuracy = rows[version]["accuracy"]
        assert rows[version]["requests"] == len(X) and rows[version]["feedback"] == len(X)
        assert accuracy["n"] == len(X) and accuracy["correct"] == correct
        assert accuracy["value"] == pytest.approx(correct / len(X), abs=1e-12)
        low, high = accuracy["ci95"]
        assert low < accuracy["value"] < high
        assert rows[version]["latency_ms"]["p50"] <= rows[version]["latency_ms"]["p99"]
    table = np.array([[counts[2], len(X) - counts[2]], [counts[1], len(X) - counts[1]]])
    _, p_scipy, _, _ = stats.chi2_contingency(table, correction=False)
    vs = rows[2]["vs_champion"]["accuracy"]
    assert vs["difference"] == pytest.approx((counts[2] - counts[1]) / len(X), abs=1e-12)
    assert vs["p_value"] == pytest.approx(p_scipy, rel=1e-9)
    assert rows[1]["vs_champion"] is None


def test_reward_interval_and_welch_test_match_scipy(app, client, digits, app_headers,
                                                    analyst):
    rng = np.random.default_rng(3)
    rewards = {1: rng.normal(1.0, 0.5, 60), 2: rng.normal(1.2, 0.8, 45)}
    for version, values in rewards.items():
        for i, value in enumerate(values):
            rid = f"r{version}-{i}"
            predict(client, app_headers, digits["X"][i].tolist(),
                    **{"X-Model-Version": str(version), "X-Request-Id": rid})
            response = client.post("/feedback", json={"request_id": rid,
                                                      "reward": float(value)},
                                   headers=app_headers)
            assert response.status_code == 202
    flush(app)
    result = client.get("/analytics/models/digits/compare", headers=analyst).get_json()
    rows = {r["version"]: r for r in result["versions"]}
    assert result["champion"]["version"] == 1  # most requests, no alias
    for version, values in rewards.items():
        reward = rows[version]["reward"]
        assert reward["n"] == len(values)
        assert reward["mean"] == pytest.approx(values.mean(), rel=1e-9)
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                     scale=stats.sem(values))
        assert reward["ci95"] == pytest.approx([low, high], rel=1e-9)
    welch = stats.ttest_ind(rewards[2], rewards[1], equal_var=False)
    assert rows[2]["vs_champion"]["reward"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)


def test_feedback_rules(app, client, digits, app_headers):
    row = digits["X"][0].tolist()
    predict(client, app_headers, row, **{"X-Request-Id": "fb-1"})
    # before the flusher has written the outcome: still joined, still 202
    first = client.post("/feedback", json={"request_id": "fb-1", "label": 3},
                        headers=app_headers)
    assert first.status_code == 202 and first.get_json()["status"] == "recorded"
    again = client.post("/feedback", json={"request_id": "fb-1", "label": 3},
                        headers=app_headers)
    assert again.status_code == 202 and again.get_json()["status"] == "unchanged"
    other = client.post("/feedback", json={"request_id": "fb-1", "label": 4},
                        headers=app_headers)
    assert other.status_code == 409 and error_of(other)["code"] == "conflict"
    never = client.post("/feedback", json={"request_id": "never-served", "label": 1},
                        headers=app_headers)
    assert never.status_code == 404
    for bad in ({"request_id": "fb-1"}, {"request_id": "fb-1", "label": True},
                {"request_id": "fb-1", "label": 1.5}, {"request_id": "bad id", "label": 1},
                {"request_id": "fb-1", "reward": "1"}, {"request_id": "fb-1", "x": 1},
                {"items": []}, {"items": [{}] * 1001}, [1, 2]):
        response = client.post("/feedback", json=bad, headers=app_headers)
        assert response.status_code == 400, bad
    predict(client, app_headers, row, **{"X-Request-Id": "fb-2"})
    batch = client.post("/feedback", json={"items": [
        {"request_id": "fb-2", "reward": 0.5}, {"request_id": "fb-1", "label": 4},
        {"request_id": "nope", "label": 1}, {"request_id": "fb-2", "reward": 0.5},
        {"label": 1}]}, headers=app_headers)
    assert batch.status_code == 200
    assert [i["status"] for i in batch.get_json()["items"]] == [202, 409, 404, 202, 400]


def test_feedback_comes_only_from_the_token_that_made_the_request_or_a_labeller(
        app, client, digits, app_headers, role_tokens, db):
    """API.md: the token that made the request, any `feedback` token, or `ops` may label it;
    for any other token the request does not exist (404, as for an id never served)."""
    from registry import tokens

    other_app = bearer(tokens.create_token(db, "app", "second-app", "tests"))
    labeller = bearer(role_tokens["feedback"])
    ops = bearer(role_tokens["ops"])
    row = digits["X"][0].tolist()
    for request_id in ("mine-pending", "mine-flushed", "mine-batch"):
        predict(client, app_headers, row, **{"X-Request-Id": request_id})
    # before the flush (the row is still in the worker's buffer), then after it
    for request_id in ("mine-pending", "mine-flushed"):
        if request_id == "mine-flushed":
            flush(app)
        stranger = client.post("/feedback", json={"request_id": request_id, "label": 1},
                               headers=other_app)
        assert stranger.status_code == 404, stranger.get_json()
        never = client.post("/feedback", json={"request_id": "never-served", "label": 1},
                            headers=other_app)
        assert error_of(stranger) == {**error_of(never), "message": error_of(
            never)["message"].replace("never-served", request_id)}
    batch = client.post("/feedback", json={"items": [{"request_id": "mine-batch", "label": 2}]},
                        headers=other_app)
    assert [i["status"] for i in batch.get_json()["items"]] == [404]
    # the stranger's attempts recorded nothing: the owner's label is the first
    own = client.post("/feedback", json={"request_id": "mine-pending", "label": 3},
                      headers=app_headers)
    assert own.status_code == 202 and own.get_json()["status"] == "recorded"
    assert client.post("/feedback", json={"request_id": "mine-flushed", "label": 4},
                       headers=labeller).get_json()["status"] == "recorded"
    assert client.post("/feedback", json={"request_id": "mine-batch", "reward": 1.0},
                       headers=ops).get_json()["status"] == "recorded"
    # a feedback token may label, not predict
    assert client.post("/predict", json={"model": "digits", "inputs": [row]},
                       headers=labeller).status_code == 403
    flush(app)
    from sqlalchemy import select

    from registry.tables import Feedback, Outcome

    with db.read() as session:
        labels = {f.request_id: (f.label, f.reward) for f in session.scalars(select(Feedback))}
        callers = set(session.scalars(select(Outcome.caller)))
    assert labels == {"mine-pending": (3, None), "mine-flushed": (4, None),
                      "mine-batch": (None, 1.0)}
    app_key = role_tokens["app"].split("_")[1]
    assert callers == {app_key}


def test_reused_request_id_is_409(client, digits, app_headers):
    row = digits["X"][0].tolist()
    predict(client, app_headers, row, **{"X-Request-Id": "same"})
    response = client.post("/predict", json={"model": "digits", "inputs": [row]},
                           headers={**app_headers, "X-Request-Id": "same"})
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"


def test_shadow_outcomes_and_agreement(app, client, digits, app_headers, analyst, ops):
    X = digits["X"][:60]
    client.put("/admin/models/digits/traffic", json={"weights": {"1": 100},
                                                      "shadow": {"2": 100, "3": 100}},
               headers=ops)
    for i in range(len(X)):
        predict(client, app_headers, X[i].tolist(), **{"X-Request-Id": f"s-{i}"})
    services = app.extensions["mgw"]
    services.shadows.stop()  # waits for the queued shadow runs
    flush(app)
    result = client.get("/analytics/models/digits/compare", headers=analyst).get_json()
    labels = {v: direct_labels(digits["paths"][n], X) for v, n in
              ((1, "logreg"), (2, "forest"), (3, "mlp"))}
    shadow = {s["version"]: s for s in result["shadow"]}
    assert set(shadow) == {2, 3} and [r["version"] for r in result["versions"]] == [1]
    for version in (2, 3):
        assert shadow[version]["compared"] == len(X)
        assert shadow[version]["agreed"] == int((labels[version] == labels[1]).sum())
        assert shadow[version]["primary_version"] == 1
    export = client.get("/analytics/models/digits/outcomes?format=jsonl&kind=shadow",
                        headers=analyst)
    rows = [orjson.loads(line) for line in export.data.splitlines()]
    assert len(rows) == 2 * len(X) and {r["kind"] for r in rows} == {"shadow"}
    assert {r["request_id"] for r in rows} == {f"s-{i}" for i in range(len(X))}


def test_export_filters_and_columns(app, client, digits, app_headers, analyst):
    for i in range(10):
        predict(client, app_headers, digits["X"][i].tolist(),
                **{"X-Model-Version": str(1 + i % 2), "X-Request-Id": f"e-{i}"})
    client.post("/feedback", json={"request_id": "e-0", "label": int(digits["y"][0]),
                                   "reward": 1.0}, headers=app_headers)
    flush(app)
    response = client.get("/analytics/models/digits/outcomes?format=csv", headers=analyst)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.data.decode())))
    assert len(rows) == 10
    assert set(rows[0]) >= {"request_id", "model", "version", "kind", "reason", "revision", "ts",
                            "latency_ms", "status", "error_code", "prediction", "label",
                            "reward"}
    first = next(r for r in rows if r["request_id"] == "e-0")
    assert first["label"] == str(digits["y"][0]) and first["reward"] == "1.0"
    assert first["reason"] == "pin" and first["status"] == "200"
    only_two = client.get("/analytics/models/digits/outcomes?format=jsonl&version=2",
                          headers=analyst)
    assert {orjson.loads(line)["version"] for line in only_two.data.splitlines()} == {2}
    future = client.get("/analytics/models/digits/outcomes?since=2999-01-01T00:00:00Z",
                        headers=analyst)
    assert future.data.decode().strip().count("\n") == 0  # the header only
    for bad in ("format=xml", "since=yesterday", "version=x", "kind=other",
                "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"):
        assert client.get(f"/analytics/models/digits/outcomes?{bad}",
                          headers=analyst).status_code == 400, bad
    assert client.get("/analytics/models/nope/compare", headers=analyst).status_code == 404


def test_errors_are_logged_with_their_code(app, client, digits, app_headers, analyst):
    bad = client.post("/predict", json={"model": "digits", "inputs": [[1.0] * 63]},
                      headers={**app_headers, "X-Model-Version": "1"})
    assert bad.status_code == 400
    flush(app)
    rows = [orjson.loads(line) for line in client.get(
        "/analytics/models/digits/outcomes?format=jsonl", headers=analyst).data.splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == 400
    assert rows[0]["error_code"] == "invalid_input" and rows[0]["version"] == 1


def test_cli_compare_export_and_prune(app, client, digits, app_headers, settings, tmp_path):
    from datetime import UTC, datetime, timedelta

    from registry.db import Database
    from registry.outcomes import insert_outcomes
    from tests.test_cli import run

    for i in range(6):
        predict(client, app_headers, digits["X"][i].tolist(),
                **{"X-Model-Version": str(1 + i % 2), "X-Request-Id": f"c-{i}"})
    flush(app)
    old = datetime.now(UTC) - timedelta(days=400)
    insert_outcomes(Database(settings.database_url), [{
        "request_id": "ancient", "model": "digits", "version": 1, "kind": "primary",
        "reason": "weight", "revision": None, "ts": old, "latency_ms": 1.0, "model_ms": 1.0,
        "status": 200, "error_code": None, "prediction": None, "predicted_label": None,
        "input_sha256": None, "inputs": None}])
    env = {"GATEWAY_DATABASE_URL": settings.database_url}
    compared = orjson.loads(run(["analytics", "compare", "digits", "--json"], tmp_path,
                                env).stdout)
    assert {v["version"]: v["requests"] for v in compared["versions"]} == {1: 4, 2: 3}
    table = run(["analytics", "compare", "digits"], tmp_path, env).stdout
    assert "champion version 1" in table
    exported = run(["analytics", "export", "digits", "--format", "csv", "--version", "2"],
                   tmp_path, env).stdout.splitlines()
    assert len(exported) == 4 and exported[0].startswith("request_id,model,version")
    pruned = run(["outcomes", "prune", "--older-than-days", "30"], tmp_path, env).stdout
    assert "deleted 1 outcomes" in pruned
    compared = orjson.loads(run(["analytics", "compare", "digits", "--json"], tmp_path,
                                env).stdout)
    assert {v["version"]: v["requests"] for v in compared["versions"]} == {1: 3, 2: 3}


def test_export_pages_exactly_once_across_spans_and_models(db):
    """export_rows pages by id spans (see its docstring): every row of the model exactly once,
    in id order, with its own feedback, whether the model's ids are dense, sparse among another
    model's, or missing from whole spans; plain Database, both dialects."""
    from datetime import UTC, datetime

    from registry.outcomes import export_rows, insert_outcomes, record_feedback

    ts = datetime.now(UTC)

    def row(i, model):
        return {"request_id": f"{model}-{i}", "model": model, "version": 1, "kind": "primary",
                "reason": "weight", "revision": 1, "ts": ts, "latency_ms": 1.0,
                "model_ms": 0.5, "status": 200, "error_code": None, "prediction": None,
                "predicted_label": i % 10, "input_sha256": None, "inputs": None}

    # 0-99 dense, then one digits row per 30 rows of `other`, then a gap of 500 other rows,
    # then dense again: with chunk=7 the spans are 56 ids, so some spans hold no digits row
    layout = (["digits"] * 100 + (["other"] * 29 + ["digits"]) * 20 + ["other"] * 500
              + ["digits"] * 50)
    insert_outcomes(db, [row(i, model) for i, model in enumerate(layout)])
    expected = [f"digits-{i}" for i, model in enumerate(layout) if model == "digits"]
    for rid in expected[::3]:
        record_feedback(db, "digits", rid, 7, 0.5)
    record_feedback(db, "other", "other-100", 1, None)  # another model's feedback stays its own
    exported = list(export_rows(db, "digits", None, None, None, None, chunk=7))
    assert [r[0] for r in exported] == expected
    labelled = {r[0]: (r[-2], r[-1]) for r in exported}
    assert {rid for rid, fb in labelled.items() if fb != (None, None)} == set(expected[::3])
    assert all(labelled[rid] == (7, 0.5) for rid in expected[::3])
    assert list(export_rows(db, "nobody", None, None, None, None, chunk=7)) == []


def test_feedback_while_the_database_is_unreachable_is_503(app, client, digits, app_headers,
                                                           settings, database_url):
    """A database outage is the caller's cue to retry (`503 unavailable`), not a gateway bug
    (`500 internal`, which bench.soak saw for every feedback during a PostgreSQL restart)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite can be made unreachable in-process by moving its file away")
    from pathlib import Path

    answer = predict(client, app_headers, digits["X"][0].tolist())  # the token is now cached
    flush(app)
    path = Path(settings.database_url.removeprefix("sqlite:///"))
    away = path.with_name(path.name + ".away")
    path.rename(away)
    path.mkdir()  # "unable to open database file" for every new connection
    app.extensions["mgw"].db.dispose()
    try:
        response = client.post("/feedback", json={"request_id": answer["request_id"],
                                                  "label": 1}, headers=app_headers)
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["error"]["code"] == "unavailable"
    finally:
        path.rmdir()
        away.rename(path)
    app.extensions["mgw"].db.dispose()
    again = client.post("/feedback", json={"request_id": answer["request_id"], "label": 1},
                        headers=app_headers)
    assert again.status_code == 202, again.get_json()

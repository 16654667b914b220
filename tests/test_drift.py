"""Input drift: reference bins, PSI, input sampling, and the score in /metrics, /analytics and
the dashboard, on a real app (SQLite and PostgreSQL, Redis, onnxruntime), with every number
checked against a computation written here independently of gateway.lifecycle.drift."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from scipy.stats.mstats import mquantiles
from sklearn.datasets import load_digits
from sqlalchemy import func, select, text

from gateway.lifecycle import drift
from gateway.lifecycle.drift_monitor import DriftMonitor
from registry import service
from registry.drift import sampled_inputs
from registry.store import ArtifactStore
from registry.tables import Evaluation, Model, Outcome
from tests.conftest import bearer, error_of

THRESHOLD = 0.2


# ---- an independent implementation, written with loops and explicit intervals ---------------


def hand_cuts(column: np.ndarray) -> list[float]:
    """Deciles by scipy's mquantiles (alphap=betap=1 is the linear rule), made unique, with the
    largest float32 below the minimum in front."""
    deciles = mquantiles(column.astype(np.float64), prob=[i / 10 for i in range(11)],
                         alphap=1, betap=1)
    unique = sorted({float(np.float32(q)) for q in deciles})
    below = float(np.nextafter(np.float32(unique[0]), np.float32(-np.inf)))
    return [below, *unique]


def hand_proportions(cuts: list[float], values: np.ndarray) -> list[float]:
    edges = [-math.inf, *cuts, math.inf]
    counts = [0] * (len(cuts) + 1)
    for x in values.astype(np.float32).tolist():
        for i in range(len(counts)):
            if edges[i] < x <= edges[i + 1]:
                counts[i] += 1
                break
    return [c / len(values) for c in counts]


def hand_psi(expected: list[float], actual: list[float], floor: float = 1e-4) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total


def hand_scores(reference_rows: np.ndarray, live_rows: np.ndarray) -> list[float]:
    out = []
    for j in range(reference_rows.shape[1]):
        cuts = hand_cuts(reference_rows[:, j])
        out.append(hand_psi(hand_proportions(cuts, reference_rows[:, j]),
                            hand_proportions(cuts, live_rows[:, j])))
    return out


def training_rows(test_rows: np.ndarray) -> np.ndarray:
    """Every digits image that is not in the test split (the reference): in-distribution data
    the reference has never seen."""
    X = load_digits().data.astype(np.float32)
    held_out = {row.tobytes() for row in test_rows.astype(np.float32)}
    return np.asarray([row for row in X if row.tobytes() not in held_out])


def shifted(rows: np.ndarray) -> np.ndarray:
    return np.minimum(rows + 4.0, 16.0).astype(np.float32)


# ---- the statistics ----------------------------------------------------------------------------


def test_psi_matches_a_hand_computation():
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5), worked by hand: 0.878890
    assert drift.psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == pytest.approx(
        0.4 * math.log(1.8) + 0.4 * math.log(5.0), abs=1e-12)
    assert drift.psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == pytest.approx(0.878890,
                                                                                 abs=1e-6)
    # an empty bin costs ln(p / floor), not infinity
    assert drift.psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.4, 0.1])) == pytest.approx(
        hand_psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]), abs=1e-12)
    assert drift.psi(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0


def test_reference_bins_match_independent_deciles(digits):
    X = digits["X"]
    reference = drift.reference_stats(X)
    assert reference["rows"] == len(X) and reference["features"] == reference["kept"] == 64
    for j in range(64):
        cuts = hand_cuts(X[:, j])
        assert reference["cuts"][j] == cuts, j
        assert reference["expected"][j] == pytest.approx(hand_proportions(cuts, X[:, j]),
                                                         abs=1e-12)
        # the bins outside the reference's range are empty by construction
        assert reference["expected"][j][0] == 0.0 and reference["expected"][j][-1] == 0.0


def test_scores_match_the_hand_computation_for_in_distribution_and_shifted_rows(digits):
    X = digits["X"]
    reference = drift.reference_stats(X)
    live = training_rows(X)[:700]
    for rows, drifted in ((live, False), (shifted(live), True)):
        expected = hand_scores(X, rows)
        result = drift.score_rows(reference, rows)
        assert result is not None and result.samples == len(rows)
        assert result.score == pytest.approx(max(expected), abs=1e-9)
        top_hand = sorted(range(64), key=lambda j: -expected[j])[:drift.TOP_FEATURES]
        assert [round(v, 9) for _, v in result.top] == [round(expected[j], 9) for j in top_hand]
        assert (result.score > THRESHOLD) is drifted, result.score


def test_a_constant_feature_detects_a_shift_in_either_direction():
    reference = drift.reference_stats(np.zeros((100, 1), dtype=np.float32))
    assert reference["expected"] == [[0.0, 1.0, 0.0]]
    every_row_moved = 2 * (1 - 1e-4) * math.log(1 / 1e-4)  # (1 - f) ln(1/f) + (f - 1) ln(f)
    for value in (1.0, -1.0, 0.5):
        rows = np.full((600, 1), value, dtype=np.float32)
        score = drift.score_rows(reference, rows)
        assert score is not None and score.score == pytest.approx(every_row_moved, rel=1e-12)
    assert drift.score_rows(reference, np.zeros((600, 1), dtype=np.float32)).score == 0.0


def test_a_score_needs_the_minimum_number_of_rows(digits):
    reference = drift.reference_stats(digits["X"])
    live = training_rows(digits["X"])
    assert drift.MIN_SAMPLES == 500
    assert drift.score_rows(reference, live[:499]) is None
    assert drift.score_rows(reference, live[:500]).samples == 500


def test_reference_stats_is_bounded_and_refuses_what_says_nothing():
    wide = np.random.default_rng(0).normal(size=(20, 1100)).astype(np.float32)
    reference = drift.reference_stats(wide)
    assert reference["features"] == 1100 and reference["kept"] == drift.MAX_FEATURES == 1024
    assert len(reference["cuts"]) == len(reference["expected"]) == 1024
    live = np.random.default_rng(1).normal(size=(600, 1100)).astype(np.float32)
    assert drift.score_rows(reference, live).score > 0  # scored on the first 1024 features
    for bad in (np.zeros((0, 3)), np.zeros(5), np.array([[1.0, math.nan]]),
                np.array([[1.0, math.inf]]), np.array([["a", "b"]])):
        with pytest.raises(ValueError):
            drift.reference_stats(bad)


def test_rows_are_inputs_flattened_and_concatenated_in_signature_order():
    a = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    b = np.arange(100, 112, dtype=np.int64).reshape(3, 4)
    matrix = drift.feature_matrix([a, b])
    assert matrix is not None and matrix.dtype == np.float32 and matrix.shape == (3, 8)
    assert matrix[1].tolist() == [4, 5, 6, 7, 104, 105, 106, 107]
    assert drift.feature_matrix([a, b[:2]]) is None  # no common row count
    assert drift.feature_matrix([np.array(["x"])]) is None  # not numeric
    many = np.full((40, 3), 0.1, dtype=np.float32)
    rows = drift.logged_rows([many])
    assert len(rows) == drift.MAX_ROWS_PER_REQUEST == 32
    assert rows[0] == [0.1, 0.1, 0.1]  # float32 printed shortest, read back as the same float32
    assert np.asarray(rows, dtype=np.float32).tobytes() == many[:32].tobytes()


# ---- end to end ----------------------------------------------------------------------------


@pytest.fixture
def settings(settings):
    return settings.with_(input_sample_rate=1.0, drift_refresh_seconds=0.0)


def add_reference(db, version, rows, name="digits"):
    with db.session() as session:
        model_id = session.scalar(select(Model.id).where(Model.name == name))
        evaluation = Evaluation(model_id=model_id, version=version, dataset_sha256="a" * 64,
                                dataset_name="digits-test", rows=len(rows), metrics={},
                                reference=drift.reference_stats(rows), created_by="tests")
        session.add(evaluation)
        session.flush()
        return evaluation.id


def send(client, token, version, rows, batch=32):
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        response = client.post("/predict", json={"model": "digits", "inputs": chunk.tolist()},
                               headers={**bearer(token), "X-Model-Version": str(version)})
        assert response.status_code == 200, response.get_json()


def metric_values(body: str, name: str) -> dict[str, float]:
    out = {}
    for line in body.splitlines():
        match = re.fullmatch(name + r'\{model="digits",version="(\d+)"\} (\S+)', line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def test_drift_rises_for_shifted_inputs_and_stays_low_for_in_distribution(
        app, client, db, digits, role_tokens):
    X = digits["X"]
    live = training_rows(X)[:640]
    old_evaluation = add_reference(db, 1, shifted(X))  # superseded by the next one
    evaluation_1 = add_reference(db, 1, X)
    add_reference(db, 3, X)
    assert evaluation_1 > old_evaluation
    send(client, role_tokens["app"], 1, live)
    send(client, role_tokens["app"], 3, shifted(live))
    app.extensions["mgw"].outcomes.flush()

    # what reached the database is exactly what was sent, on both databases
    stored = np.asarray(sampled_inputs(db, "digits", 1, 5000, 64), dtype=np.float32)
    assert stored.shape == live.shape
    assert sorted(map(bytes, stored)) == sorted(map(bytes, live.astype(np.float32)))

    in_dist = max(hand_scores(X, live))
    moved = max(hand_scores(X, shifted(live)))
    assert in_dist < THRESHOLD < moved

    analyst = bearer(role_tokens["analyst"])
    response = client.get("/analytics/models/digits/drift", headers=analyst)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    versions = {v["version"]: v for v in body["versions"]}
    assert sorted(versions) == [1, 2, 3] and body["threshold"] == THRESHOLD
    assert versions[1]["score"] == pytest.approx(in_dist, abs=1e-9)
    assert versions[1]["drifted"] is False and versions[1]["samples"] == len(live)
    assert versions[1]["reference"]["evaluation_id"] == evaluation_1
    assert versions[1]["reference"]["rows"] == len(X)
    assert versions[3]["score"] == pytest.approx(moved, abs=1e-9)
    assert versions[3]["drifted"] is True and versions[3]["status"] == "ok"
    assert versions[3]["top_features"][0]["psi"] == pytest.approx(moved, abs=1e-9)
    assert versions[2] == {"version": 2, "status": "no_reference", "score": None,
                           "threshold": THRESHOLD, "drifted": None, "samples": 0,
                           "reference": None, "top_features": []}

    scrape = client.get("/metrics").get_data(as_text=True)
    psi = metric_values(scrape, "gateway_drift_psi")
    assert set(psi) == {"1", "3"}
    assert psi["1"] == pytest.approx(in_dist, rel=1e-9) and psi["1"] < THRESHOLD
    assert psi["3"] == pytest.approx(moved, rel=1e-9) and psi["3"] > THRESHOLD
    assert metric_values(scrape, "gateway_drift_samples") == {"1": 640.0, "3": 640.0}

    page = client.get("/dashboard?model=digits", headers={**analyst, "Accept": "text/html"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-drift-version="1" data-drifted="false"' in html
    assert 'data-drift-version="3" data-drifted="true"' in html
    assert f"{moved:.3f}" in html and f"{in_dist:.3f}" in html


def test_drift_route_needs_an_analyst_and_a_known_model(client, digits, role_tokens):
    assert client.get("/analytics/models/digits/drift").status_code == 401
    app_token = bearer(role_tokens["app"])
    assert client.get("/analytics/models/digits/drift", headers=app_token).status_code == 403
    response = client.get("/analytics/models/nope/drift", headers=bearer(role_tokens["analyst"]))
    assert response.status_code == 404 and error_of(response)["code"] == "unknown_model"


def test_too_few_rows_report_no_score(app, client, db, digits, role_tokens):
    add_reference(db, 1, digits["X"])
    send(client, role_tokens["app"], 1, training_rows(digits["X"])[:100])
    app.extensions["mgw"].outcomes.flush()
    body = client.get("/analytics/models/digits/drift",
                      headers=bearer(role_tokens["analyst"])).get_json()
    first = body["versions"][0]
    assert (first["status"], first["score"], first["samples"]) == ("too_few_samples", None, 100)
    scrape = client.get("/metrics").get_data(as_text=True)
    assert metric_values(scrape, "gateway_drift_psi") == {}
    assert metric_values(scrape, "gateway_drift_samples") == {"1": 100.0}


def test_several_inputs_are_logged_in_signature_order(app, client, db, settings, role_tokens):
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["out"], axis=1)], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    service.register_version(db, ArtifactStore(settings.model_store), "two",
                             model.SerializeToString(), None, "tests",
                             settings.max_model_bytes)
    onnx.checker.check_model(model)
    response = client.post("/predict", headers=bearer(role_tokens["app"]), json={
        "model": "two", "inputs": {"b": [[3, 4, 5], [8, 9, 10]], "a": [[1, 2], [6, 7]]}})
    assert response.status_code == 200, response.get_json()
    app.extensions["mgw"].outcomes.flush()
    assert sampled_inputs(db, "two", 1, 10, 5) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_reuses_a_score_until_it_is_due(app, client, db, digits, role_tokens):
    X = digits["X"]
    add_reference(db, 1, X)
    clock = Clock()
    monitor = DriftMonitor(db, THRESHOLD, 2000, refresh_seconds=30, clock=clock)
    live = training_rows(X)
    send(client, role_tokens["app"], 1, live[:640])
    app.extensions["mgw"].outcomes.flush()
    first = monitor.model("digits").versions[1]
    send(client, role_tokens["app"], 1, shifted(live[640:1280]))
    app.extensions["mgw"].outcomes.flush()
    clock.now = 29.9
    assert monitor.model("digits").versions[1] is first  # cached: no database read
    clock.now = 30.0
    fresh = monitor.model("digits").versions[1]
    assert fresh.samples == 1280 and fresh.score.score > THRESHOLD > first.score.score


@pytest.fixture
def unsampled(settings):
    return settings.with_(input_sample_rate=0.0)


def test_with_sampling_off_nothing_is_logged_and_there_is_no_score(
        unsampled, db, digits, role_tokens):
    from gateway.web.app import create_app

    app = create_app(unsampled)
    try:
        client = app.test_client()
        add_reference(db, 1, digits["X"])
        send(client, role_tokens["app"], 1, training_rows(digits["X"])[:640])
        app.extensions["mgw"].outcomes.flush()
        with db.read() as session:
            total = session.scalar(select(func.count(Outcome.id)))
            kept = session.scalar(select(func.count(Outcome.id)).where(
                Outcome.inputs.is_not(None)))
        assert (total, kept) == (20, 0)
        body = client.get("/analytics/models/digits/drift",
                          headers=bearer(role_tokens["analyst"])).get_json()
        assert body["versions"][0]["score"] is None and body["versions"][0]["samples"] == 0
        scrape = client.get("/metrics").get_data(as_text=True)
        assert metric_values(scrape, "gateway_drift_psi") == {}
    finally:
        app.extensions["mgw"].close()


def test_the_sampled_share_follows_the_rate(settings, db, digits, role_tokens):
    from gateway.web.app import create_app

    app = create_app(settings.with_(input_sample_rate=0.25))
    try:
        client = app.test_client()
        send(client, role_tokens["app"], 1, training_rows(digits["X"])[:400], batch=1)
        app.extensions["mgw"].outcomes.flush()
        with db.read() as session:
            kept = session.scalar(select(func.count(Outcome.id)).where(
                Outcome.inputs.is_not(None)))
        # binomial(400, 0.25): mean 100, sd 8.66; 5 sd either side fails once in 3.5 million
        assert 57 <= kept <= 143, kept
    finally:
        app.extensions["mgw"].close()


def test_a_database_error_leaves_metrics_and_the_dashboard_up(
        app, client, db, digits, role_tokens, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("the table is renamed under the app: done on the SQLite file only")
    add_reference(db, 1, digits["X"])
    send(client, role_tokens["app"], 1, training_rows(digits["X"])[:64])
    app.extensions["mgw"].outcomes.flush()
    with db.session() as session:
        session.execute(text("ALTER TABLE evaluations RENAME TO evaluations_away"))
    try:
        response = client.get("/metrics")
        assert response.status_code == 200
        scrape = response.get_data(as_text=True)
        assert ('gateway_requests_total{kind="primary",model="digits",status="200",version="1"}'
                ' 2.0') in scrape.splitlines()
        assert metric_values(scrape, "gateway_drift_samples") == {}
        analyst = bearer(role_tokens["analyst"])
        failed = client.get("/analytics/models/digits/drift", headers=analyst)
        assert failed.status_code == 503 and error_of(failed)["code"] == "unavailable"
        page = client.get("/dashboard", headers={**analyst, "Accept": "text/html"})
        assert page.status_code == 200
        assert "drift scores are unavailable" in page.get_data(as_text=True)
    finally:
        with db.session() as session:
            session.execute(text("ALTER TABLE evaluations_away RENAME TO evaluations"))
    body = client.get("/analytics/models/digits/drift", headers=analyst).get_json()
    assert body["versions"][0]["samples"] == 64  # nothing cached from the failure


@pytest.mark.timeout(120)
def test_served_drift_is_computed_by_the_agent_and_shown_by_every_worker(
        settings, db, digits, role_tokens, tmp_path, database_url):
    """Under `gateway serve` the agent computes drift and every worker's `/metrics` shows it
    (one family, the hand-computed score); a scrape computes nothing in the worker."""
    import time
    import urllib.request

    import orjson

    from tests.conftest import server_env
    from tests.server import gateway_server

    if not database_url.startswith("sqlite"):
        pytest.skip("who computes drift does not depend on the database kind")
    X = digits["X"]
    live = training_rows(X)[:640]
    add_reference(db, 1, X)
    expected = max(hand_scores(X, live))
    env = {**server_env(settings), "GATEWAY_INPUT_SAMPLE_RATE": "1",
           "GATEWAY_DRIFT_REFRESH_SECONDS": "1"}
    with gateway_server(env, cwd=tmp_path) as base:
        for start in range(0, len(live), 32):
            request = urllib.request.Request(
                f"{base}/predict", method="POST",
                data=orjson.dumps({"model": "digits", "inputs": live[start:start + 32].tolist()}),
                headers={"Authorization": f"Bearer {role_tokens['app']}",
                         "Content-Type": "application/json", "X-Model-Version": "1"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
                scrape = response.read().decode()
            if metric_values(scrape, "gateway_drift_samples").get("1") == 640.0:
                break
            assert time.monotonic() < deadline, "the agent never published drift"
            time.sleep(0.3)
        for _ in range(6):  # fresh connections: both workers answer some of these
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
                scrape = response.read().decode()
            assert scrape.count("# HELP gateway_drift_psi ") == 1
            assert metric_values(scrape, "gateway_drift_psi")["1"] == pytest.approx(
                expected, rel=1e-9)
            assert metric_values(scrape, "gateway_drift_samples") == {"1": 640.0}

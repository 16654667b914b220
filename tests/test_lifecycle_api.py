"""Evaluations, the gate and quantization over HTTP (`/admin/...`), as a CI job with an ops
token drives them: each checked against an independent computation (onnxruntime and sklearn
run here) and against what the registry stores; bad input is 4xx and stores nothing."""

from __future__ import annotations

import io

import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score
from sqlalchemy import func, select

from registry import evaluations, service
from registry.tables import AuditEntry, Evaluation
from tests.conftest import bearer, error_of


def upload(client, path: str, headers: dict, data: bytes, filename: str = "holdout.npz"):
    return client.post(path, headers=headers, content_type="multipart/form-data",
                       data={"dataset": (io.BytesIO(data), filename)})


def evaluation_count(db) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Evaluation)) or 0)


def test_an_uploaded_dataset_is_evaluated_and_recorded(client, db, digits, examples_dir, ops):
    raw = (examples_dir / "digits_test.npz").read_bytes()
    response = upload(client, "/admin/models/digits/versions/1/evaluations", ops, raw)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    X, y = digits["X"], digits["y"]
    session = ort.InferenceSession(str(digits["paths"]["logreg"]),
                                   providers=["CPUExecutionProvider"])
    expected = accuracy_score(y, session.run(["label"], {"input": X})[0])
    assert body["model"] == "digits" and body["version"] == 1
    assert body["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert body["dataset"]["rows"] == len(y) and body["gate"] is None
    stored = evaluations.latest_evaluation(db, "digits", 1)
    assert stored is not None and stored["id"] == body["id"]
    listed = client.get("/admin/models/digits/versions/1/evaluations", headers=ops).get_json()
    assert [e["id"] for e in listed["evaluations"]] == [body["id"]]
    csv = b"f0,f1,label\n1,2,0\n"  # the wrong number of features for the model
    before = evaluation_count(db)
    for data, name in ((csv, "bad.csv"), (b"not a dataset at all", "x.npz"), (b"", "e.csv")):
        response = upload(client, "/admin/models/digits/versions/1/evaluations", ops, data,
                          name)
        assert response.status_code == 400, (name, response.get_json())
        assert error_of(response)["code"] == "invalid_input"
    assert evaluation_count(db) == before


def test_uploads_that_are_not_datasets_are_refused(app, client, db, digits, ops):
    path = "/admin/models/digits/versions/1/evaluations"
    response = client.post(path, headers=ops, json={"dataset": "x"})
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"
    response = client.post(path, headers=ops, content_type="multipart/form-data",
                           data={"other": (io.BytesIO(b"1"), "a.csv")})
    assert response.status_code == 400
    app.extensions["mgw"].settings = app.extensions["mgw"].settings.with_(max_dataset_bytes=2048)
    response = upload(client, path, ops, b"0" * 5000, "big.csv")
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
    response = upload(client, "/admin/models/digits/versions/9/evaluations", ops, b"a")
    assert response.status_code == 404
    assert evaluation_count(db) == 0


def test_the_gate_is_read_and_replaced_over_http(client, db, digits, examples_dir, ops,
                                                 role_tokens):
    raw = (examples_dir / "digits_test.npz").read_bytes()
    assert upload(client, "/admin/models/digits/versions/3/evaluations", ops,
                  raw).status_code == 201
    assert client.get("/admin/models/digits/gate", headers=ops).get_json() == {
        "model": "digits", "rules": None, "versions": []}
    response = client.put("/admin/models/digits/gate", headers=ops,
                          json={"rules": ["accuracy>=0.9"], "reason": "ci"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["rules"] == ["accuracy >= 0.9"]
    verdicts = {v["version"]: v["passed"] for v in body["versions"]}
    accuracy = evaluations.latest_evaluation(db, "digits", 3)["metrics"]["accuracy"]
    assert verdicts == {1: False, 2: False, 3: accuracy >= 0.9}  # 1 and 2: not evaluated
    with db.read() as session:
        entry = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        assert entry is not None and entry.reason == "ci" and entry.actor == "test-ops"
    for bad in ({"rules": ["accuracy >= lots"]}, {"rules": "accuracy >= 1"},
                {"rules": ["x"], "extra": 1}, {"reason": "no rules"}):
        response = client.put("/admin/models/digits/gate", headers=ops, json=bad)
        assert response.status_code == 400, bad
    assert evaluations.get_gate(db, "digits") == ["accuracy >= 0.9"]  # unchanged
    response = client.put("/admin/models/digits/gate", headers=bearer(role_tokens["analyst"]),
                          json={"rules": []})
    assert response.status_code == 403
    cleared = client.put("/admin/models/digits/gate", headers=ops, json={"rules": []})
    assert cleared.status_code == 200 and cleared.get_json()["rules"] is None


def test_quantize_over_http_registers_the_child(client, db, digits, examples_dir, ops):
    response = client.post("/admin/models/digits/versions/3/quantize", headers=ops,
                           json={"reason": "smaller"})
    assert response.status_code == 400  # the parent has no evaluation dataset yet
    assert [v["version"] for v in service.list_models(db)[0]["versions"]] == [1, 2, 3]
    raw = (examples_dir / "digits_test.npz").read_bytes()
    assert upload(client, "/admin/models/digits/versions/3/evaluations", ops,
                  raw).status_code == 201
    response = client.post("/admin/models/digits/versions/3/quantize", headers=ops,
                           json={"reason": "smaller"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["version"] == 4 and body["parent_version"] == 3
    assert response.headers["Location"] == "/admin/models/digits/versions/4"
    assert service.get_version(db, "digits", 4)["sha256"] == body["sha256"]
    assert body["quantization"]["vs_parent"]["size_ratio"] < 0.6
    response = client.post("/admin/models/digits/versions/1/quantize", headers=ops)
    assert response.status_code == 400  # a linear classifier has nothing to quantize
    assert "LinearClassifier" in error_of(response)["message"]
    assert [v["version"] for v in service.list_models(db)[0]["versions"]] == [1, 2, 3, 4]
    response = client.post("/admin/models/digits/versions/3/quantize", headers=ops,
                           json={"reason": 5})
    assert response.status_code == 400


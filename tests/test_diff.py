"""`GET /admin/models/{name}/diff` and `gateway models diff`: only what differs between two
versions, each value checked against the version records and evaluations read directly."""

from __future__ import annotations

import orjson
import pytest

from registry import evaluations, service
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of


@pytest.fixture
def two_versions(settings, db, examples_dir):
    """`diffm` 1 (logistic regression) and 2 (forest), with different metadata; version 1
    evaluated on the digits test split, and a gate on accuracy."""
    store = ArtifactStore(settings.model_store)
    meta_1 = {"dataset": {"name": "digits-train", "version": "1", "sha256": "a" * 64},
              "params": {"C": 1.0}, "description": "baseline"}
    meta_2 = {"dataset": {"name": "digits-train", "version": "2", "sha256": "b" * 64},
              "params": {"n_estimators": 50}, "description": "forest", "parent_version": 1}
    service.register_version(db, store, "diffm", (examples_dir / "logreg.onnx").read_bytes(),
                             meta_1, "tests", settings.max_model_bytes)
    service.register_version(db, store, "diffm", (examples_dir / "forest.onnx").read_bytes(),
                             meta_2, "tests", settings.max_model_bytes)
    return store


def test_diff_shows_only_what_differs(client, db, two_versions, examples_dir, ops, cli,
                                      capsys, role_tokens):
    status, out, err = cli(capsys, "models", "evaluate", "diffm", "1", "--dataset",
                           str(examples_dir / "digits_test.npz"), "--json")
    assert status == 0, err
    status, _, err = cli(capsys, "models", "gate", "diffm", "--rule", "accuracy >= 0.5",
                         "--reason", "test")
    assert status == 0, err
    response = client.get("/admin/models/diffm/diff?a=1&b=2", headers=ops)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    a, b = service.get_version(db, "diffm", 1), service.get_version(db, "diffm", 2)
    assert (body["model"], body["a"], body["b"]) == ("diffm", 1, 2)
    changes = body["changes"]
    for field in ("sha256", "size_bytes", "params", "dataset", "parent_version"):
        assert changes[field] == {"a": a[field], "b": b[field]}, field
    assert "inputs" not in changes  # the same signature: equal fields are left out
    evaluation = evaluations.latest_evaluation(db, "diffm", 1)
    assert evaluation is not None
    assert changes["evaluation"]["b"] is None
    assert changes["evaluation"]["a"]["id"] == evaluation["id"]
    assert changes["evaluation"]["a"]["metrics"]["accuracy"] == pytest.approx(
        evaluation["metrics"]["accuracy"])
    assert changes["gate"]["a"] == {"passed": True, "failures": []}
    assert changes["gate"]["b"]["passed"] is False  # never evaluated: the gate refuses it

    # the command prints the same JSON; aliases resolve; a version against itself is empty
    status, out, err = cli(capsys, "models", "diff", "diffm", "1", "2", "--json")
    assert status == 0, err
    assert orjson.loads(out) == body
    assert client.put("/admin/models/diffm/aliases/champion", json={"version": 2},
                      headers=ops).status_code == 200
    same = client.get("/admin/models/diffm/diff?a=champion&b=2", headers=ops).get_json()
    assert same == {"model": "diffm", "a": 2, "b": 2, "changes": {}}
    status, out, _ = cli(capsys, "models", "diff", "diffm", "2", "champion")
    assert status == 0 and "do not differ" in out


@pytest.mark.parametrize("query, status, code", [
    ("?a=1", 400, "invalid_input"), ("", 400, "invalid_input"), ("?a=1&b=", 400, "invalid_input"),
    ("?a=1&b=9", 404, "unknown_version"), ("?a=1&b=nosuchalias", 404, "unknown_version"),
])
def test_diff_refuses_what_cannot_be_compared(client, two_versions, ops, query, status, code):
    response = client.get(f"/admin/models/diffm/diff{query}", headers=ops)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_diff_needs_ops_and_a_known_model(client, two_versions, role_tokens, ops):
    response = client.get("/admin/models/diffm/diff?a=1&b=2",
                          headers=bearer(role_tokens["analyst"]))
    assert response.status_code == 403
    response = client.get("/admin/models/nosuch/diff?a=1&b=2", headers=ops)
    assert response.status_code == 404 and error_of(response)["code"] == "unknown_model"

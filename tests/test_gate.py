"""The evaluation gate: a policy giving weight to a version that fails it is refused (400 naming
the rule, nothing changed), unless forced with a reason, which is audited; shadow versions and
rollbacks are not gated. On SQLite and PostgreSQL, through the admin API and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from sklearn.metrics import accuracy_score

from gateway.lifecycle.datasets import load_dataset
from gateway.lifecycle.evaluation import evaluate
from gateway.lifecycle.gate import normalise_rules, parse_rule
from registry import evaluations, service
from registry.errors import InvalidInput
from registry.store import ArtifactStore
from tests.conftest import error_of

TRAFFIC = "/admin/models/digits/traffic"


def accuracy_of(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    """Independently of the gateway: onnxruntime directly, sklearn's accuracy."""
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    return float(accuracy_score(y, session.run(["label"], {"input": X})[0]))


@pytest.fixture
def evaluated(settings, db, digits, examples_dir) -> dict[str, Any]:
    """digits 1 (logreg) and 3 (mlp) evaluated on the held-out npz; 2 (forest) not at all."""
    store = ArtifactStore(settings.model_store)
    dataset = load_dataset(examples_dir / "digits_test.npz", settings.max_model_bytes)
    for version in (1, 3):
        evaluate(db, store, "digits", version, dataset, "tests")
    X, y = digits["X"], digits["y"]
    return {"store": store, "dataset": dataset,
            "accuracy": {v: accuracy_of(digits["paths"][n], X, y)
                         for n, v in digits["versions"].items() if v != 2}}


def set_gate(db, *rules: str) -> None:
    evaluations.set_gate(db, "digits", normalise_rules(list(rules)), "tests", "test gate")


def put(client, ops, body: dict[str, Any]):
    return client.put(TRAFFIC, json=body, headers=ops)


def live(client, ops) -> dict[str, Any]:
    body = client.get(TRAFFIC, headers=ops).get_json()
    return {"revision": body["revision"], "weights": body["weights"], "shadow": body["shadow"]}


def test_weight_for_a_failing_version_is_refused_naming_the_rule(client, ops, db, evaluated):
    assert put(client, ops, {"weights": {"3": 100}, "reason": "mlp"}).status_code == 200
    set_gate(db, "accuracy>=0.95")
    before = live(client, ops)
    response = put(client, ops, {"weights": {"1": 50, "3": 50}, "reason": "ab"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_input"
    message = error["message"]
    assert "version 1: rule 'accuracy >= 0.95' fails" in message
    assert f"accuracy is {evaluated['accuracy'][1]:.4f}" in message
    assert evaluated["dataset"].sha256[:12] in message
    assert "version 3" not in message  # 0.9756 passes
    assert live(client, ops) == before
    response = put(client, ops, {"weights": {"2": 100}, "reason": "forest"})
    assert response.status_code == 400
    assert "version 2 has no evaluation: run gateway models evaluate digits 2" in \
        error_of(response)["message"]
    assert live(client, ops) == before
    assert len(client.get(TRAFFIC + "/history", headers=ops).get_json()["revisions"]) == 1


def test_force_needs_a_reason_and_is_audited(client, ops, db, evaluated):
    set_gate(db, "accuracy >= 0.95")
    before = live(client, ops)
    for body in ({"weights": {"1": 100}, "force": True},
                 {"weights": {"1": 100}, "force": True, "reason": "   "},
                 {"weights": {"1": 100}, "force": "yes", "reason": "r"}):
        response = put(client, ops, body)
        assert response.status_code == 400, body
        assert "force" in error_of(response)["message"]
    assert live(client, ops) == before
    response = put(client, ops, {"weights": {"1": 100}, "force": True,
                                 "reason": "incident 42: logreg only"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["weights"] == {"1": 100}
    entries = client.get("/admin/audit?model=digits", headers=ops).get_json()["entries"]
    override = next(e for e in entries if e["action"] == "traffic.gate_override")
    assert override["reason"] == "incident 42: logreg only"
    assert override["detail"]["revision"] == response.get_json()["revision"]
    assert override["detail"]["versions"] == [1]
    assert any("accuracy >= 0.95" in f for f in override["detail"]["failures"])
    # forcing versions that pass overrides nothing, so nothing is audited as an override
    assert put(client, ops, {"weights": {"3": 100}, "force": True, "reason": "back"}
               ).status_code == 200
    entries = client.get("/admin/audit?model=digits", headers=ops).get_json()["entries"]
    assert [e["action"] for e in entries].count("traffic.gate_override") == 1


def test_champion_relative_rule_compares_on_the_same_dataset(client, ops, db, settings, digits,
                                                             evaluated, tmp_path):
    set_gate(db, "accuracy >= champion - 0.01")
    acc = evaluated["accuracy"]
    # no champion yet, and no policy: the rule passes (the first version must be deployable)
    assert put(client, ops, {"weights": {"1": 100}, "reason": "first"}).status_code == 200
    service.set_alias(db, "digits", "champion", 3, "tests")
    response = put(client, ops, {"weights": {"1": 90, "3": 10}, "reason": "ab"})
    assert response.status_code == 400
    message = error_of(response)["message"]
    assert "rule 'accuracy >= champion - 0.01'" in message
    assert f"champion version 3 has {acc[3]:.4f}" in message
    assert f"the bound is {acc[3] - 0.01:.4f}" in message
    # the champion itself passes its relative rule
    assert put(client, ops, {"weights": {"3": 100}, "reason": "mlp"}).status_code == 200
    # without the alias, the champion is the live policy's heaviest version (3)
    service.delete_alias(db, "digits", "champion", "tests")
    response = put(client, ops, {"weights": {"1": 10, "3": 90}, "reason": "canary"})
    assert response.status_code == 400
    assert "champion version 3" in error_of(response)["message"]
    # an evaluation of 2 on other data (a CSV) cannot be compared with 3's npz evaluation
    csv = tmp_path / "d.csv"
    csv.write_text("label," + ",".join(f"f{i}" for i in range(64)) + "\n" + "\n".join(
        ",".join([str(int(label))] + [str(float(v)) for v in row])
        for row, label in zip(digits["X"][:50], digits["y"][:50], strict=True)))
    evaluate(db, evaluated["store"], "digits", 2, load_dataset(csv, settings.max_model_bytes),
             "tests")
    response = put(client, ops, {"weights": {"2": 10, "3": 90}, "reason": "forest"})
    assert response.status_code == 400
    assert "champion version 3 has no evaluation on dataset d.csv" in \
        error_of(response)["message"]


def test_shadow_versions_are_not_gated(client, ops, db, evaluated):
    set_gate(db, "accuracy >= 0.95")
    response = put(client, ops, {"weights": {"3": 100}, "shadow": {"1": 100, "2": 50},
                                 "reason": "try logreg and forest in the shadow"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["shadow"] == {"1": 100, "2": 50}


def test_rollback_is_exempt_from_the_gate(client, ops, db, evaluated):
    assert put(client, ops, {"weights": {"1": 100}, "reason": "old"}).status_code == 200
    assert put(client, ops, {"weights": {"3": 100}, "reason": "new"}).status_code == 200
    set_gate(db, "accuracy >= 0.95")  # version 1 (0.93) fails it from now on
    response = client.post("/admin/models/digits/rollback", json={"reason": "undo"},
                           headers=ops)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["weights"] == {"1": 100}


def one_line_error(status: int, err: str) -> str:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway:"), err
    return lines[0]


def test_cli_gate_traffic_and_force(db, evaluated, cli, capsys):
    line = one_line_error(*cli(capsys, "models", "gate", "digits", "--rule", "f1 >= 0.9",
                               "--reason", "r")[::2])
    assert "unknown metric 'f1'" in line and "accuracy, log_loss" in line
    line = one_line_error(*cli(capsys, "models", "gate", "digits", "--rule",
                               "accuracy >= 0.95")[::2])
    assert "--reason" in line
    assert evaluations.get_gate(db, "digits") is None
    status, out, err = cli(capsys, "models", "gate", "digits", "--rule", "accuracy>=0.95",
                           "--rule", "log_loss <= champion + 0.05", "--reason", "release bar")
    assert status == 0, err
    assert out.splitlines()[0] == ("digits gate: accuracy >= 0.95; "
                                   "log_loss <= champion + 0.05")
    assert "version 1: failed" in out and "version 3: passed" in out
    gate_audit = service.list_audit(db, model="digits", limit=1)[0]
    assert gate_audit["action"] == "model.gate"
    assert gate_audit["detail"] == {"from": None, "to": ["accuracy >= 0.95",
                                                         "log_loss <= champion + 0.05"]}

    line = one_line_error(*cli(capsys, "traffic", "set", "digits", "1=100", "--reason",
                               "x")[::2])
    assert "version 1: rule 'accuracy >= 0.95' fails" in line
    status, out, _ = cli(capsys, "traffic", "show", "digits", "--json")
    assert orjson.loads(out)["revision"] == 0
    status, out, err = cli(capsys, "traffic", "set", "digits", "1=100", "--force", "--reason",
                           "drill", "--json")
    assert status == 0, err
    assert orjson.loads(out)["weights"] == {"1": 100}
    actions = [e["action"] for e in service.list_audit(db, model="digits", limit=2)]
    assert actions == ["traffic.gate_override", "traffic.set"]

    status, out, _ = cli(capsys, "models", "show", "digits", "1", "--json")
    shown = orjson.loads(out)
    assert shown["gate"]["passed"] is False
    assert shown["gate"]["failures"][0].startswith("rule 'accuracy >= 0.95' fails")
    status, out, _ = cli(capsys, "models", "show", "digits", "1")
    assert "  gate: failed: rule 'accuracy >= 0.95' fails" in out
    status, out, err = cli(capsys, "models", "gate", "digits", "--clear", "--reason", "done")
    assert status == 0 and "no gate" in out, err
    assert evaluations.get_gate(db, "digits") is None


def test_rules_are_parsed_and_normalised():
    assert normalise_rules(["accuracy>=0.95", "accuracy >=  champion-0.01",
                            "latency_p99_ms<5", "log_loss <= champion", "accuracy >= .95"]) == [
        "accuracy >= 0.95", "accuracy >= champion - 0.01", "latency_p99_ms < 5",
        "log_loss <= champion"]
    rule = parse_rule("accuracy >= champion - 0.01")
    assert rule.relative and rule.value == -0.01
    assert rule.holds(0.97, 0.98 + rule.value) and not rule.holds(0.96, 0.98 + rule.value)
    for text, fragment in [("f1 >= 0.9", "unknown metric"), ("accuracy => 0.9", "is not METRIC"),
                           ("accuracy >= 1e999", "finite"), ("accuracy >= nan", "is not METRIC"),
                           ("accuracy >= champion * 2", "is not METRIC"),
                           ("", "is not METRIC")]:
        with pytest.raises(InvalidInput, match=fragment):
            parse_rule(text)
    with pytest.raises(InvalidInput, match="non-empty list"):
        normalise_rules([])

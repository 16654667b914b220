"""Evaluating a version on a labelled dataset: the metrics are those sklearn computes on
onnxruntime's own outputs, the dataset is identified by its file's sha256, and bad datasets are
refused before anything is recorded. On SQLite and PostgreSQL, through the API and the CLI."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from sklearn import metrics as skm

from gateway.lifecycle.datasets import load_dataset
from gateway.lifecycle.evaluation import evaluate
from gateway.lifecycle.scores import classification_metrics
from registry import evaluations, service
from registry.errors import InvalidInput, PayloadTooLarge
from registry.store import ArtifactStore


def expected_metrics(model_path: Path, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The metrics computed independently: onnxruntime run directly, then sklearn.metrics."""
    session = ort.InferenceSession(model_path.read_bytes(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {"input": X})
    classes = np.union1d(y, labels)
    precision, recall, _, support = skm.precision_recall_fscore_support(
        y, labels, labels=classes, zero_division=0)
    clipped = np.clip(probabilities.astype(np.float64), 1e-15, 1.0)
    return {
        "accuracy": skm.accuracy_score(y, labels),
        "per_class": {str(c): (p, r, int(s))
                      for c, p, r, s in zip(classes, precision, recall, support, strict=True)},
        "log_loss": log_loss_of(y, clipped),
    }


def log_loss_of(y: np.ndarray, probabilities: np.ndarray) -> float:
    # float32 rows sum to 1 only within 1e-7, which sklearn warns about (and tolerates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.log_loss(y, probabilities, labels=list(range(probabilities.shape[1]))))


def assert_metrics_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert got["log_loss"] == pytest.approx(want["log_loss"], rel=1e-6)
    assert set(got["per_class"]) == set(want["per_class"])
    for cls, (precision, recall, support) in want["per_class"].items():
        row = got["per_class"][cls]
        assert row["precision"] == pytest.approx(precision, abs=1e-12), cls
        assert row["recall"] == pytest.approx(recall, abs=1e-12), cls
        assert row["support"] == support, cls


@pytest.mark.parametrize("name", ["mlp", "forest"])
def test_metrics_equal_sklearn_on_onnxruntime_outputs(settings, db, digits, examples_dir,
                                                      name):
    store = ArtifactStore(settings.model_store)
    path = examples_dir / "digits_test.npz"
    dataset = load_dataset(path, settings.max_model_bytes)
    version = digits["versions"][name]
    record = evaluate(db, store, "digits", version, dataset, "tests")

    assert_metrics_equal(record["metrics"],
                         expected_metrics(digits["paths"][name], digits["X"], digits["y"]))
    file_bytes = path.read_bytes()
    assert record["dataset"] == {"name": "digits_test.npz", "rows": len(digits["y"]),
                                 "sha256": hashlib.sha256(file_bytes).hexdigest()}
    assert store.read(record["dataset"]["sha256"]) == file_bytes  # kept for later evaluations
    m = record["metrics"]
    assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]
    assert m["latency_runs"] == 200 and m["rows_per_s"] > 0
    assert (m["label_output"], m["probability_output"]) == ("label", "probabilities")
    assert evaluations.latest_evaluation(db, "digits", version) == record
    entry = service.list_audit(db, model="digits", limit=1)[0]
    assert (entry["action"], entry["version"]) == ("version.evaluate", version)
    assert entry["detail"]["accuracy"] == m["accuracy"]
    assert entry["detail"]["dataset"]["sha256"] == record["dataset"]["sha256"]


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    """Label first, then the features in order: the loader must find it by name."""
    header = ",".join(["label"] + [f"px{i}" for i in range(X.shape[1])])
    lines = [header] + [",".join([str(int(label))] + [repr(float(v)) for v in row])
                        for row, label in zip(X, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_and_npz_give_the_same_metrics(settings, db, digits, examples_dir, tmp_path):
    store = ArtifactStore(settings.model_store)
    csv_path = write_csv(tmp_path / "digits.csv", digits["X"], digits["y"])
    from_npz = evaluate(db, store, "digits", 1, load_dataset(
        examples_dir / "digits_test.npz", settings.max_model_bytes), "tests")
    from_csv = evaluate(db, store, "digits", 1, load_dataset(
        csv_path, settings.max_model_bytes), "tests")
    for key in ("accuracy", "per_class", "log_loss"):
        assert from_csv["metrics"][key] == from_npz["metrics"][key], key
    assert from_csv["dataset"]["sha256"] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
    assert from_csv["dataset"]["sha256"] != from_npz["dataset"]["sha256"]
    listed = evaluations.list_evaluations(db, "digits", 1)
    assert [e["id"] for e in listed] == [from_csv["id"], from_npz["id"]]  # newest first
    same = evaluations.latest_evaluation(db, "digits", 1, from_npz["dataset"]["sha256"])
    assert same is not None and same["id"] == from_npz["id"]


def test_npz_features_may_be_named_after_the_input(settings, db, digits, tmp_path):
    path = tmp_path / "named.npz"
    np.savez(path, input=digits["X"], y=digits["y"])
    with pytest.raises(InvalidInput, match="no features array"):
        load_dataset(path, settings.max_model_bytes)
    dataset = load_dataset(path, settings.max_model_bytes, input_name="input")
    record = evaluate(db, ArtifactStore(settings.model_store), "digits", 3, dataset, "tests")
    assert_metrics_equal(record["metrics"],
                         expected_metrics(digits["paths"]["mlp"], digits["X"], digits["y"]))


def bad_datasets(tmp: Path, X: np.ndarray, y: np.ndarray) -> dict[str, tuple[Path, str]]:
    """Files that must be refused, with a fragment of the message that says why."""
    out: dict[str, tuple[Path, str]] = {}

    def npz(name: str, fragment: str, **arrays: Any) -> None:
        np.savez(tmp / f"{name}.npz", **arrays)
        out[name] = (tmp / f"{name}.npz", fragment)

    def csv(name: str, fragment: str, text: str) -> None:
        (tmp / f"{name}.csv").write_text(text)
        out[name] = (tmp / f"{name}.csv", fragment)

    out["missing"] = (tmp / "nowhere.npz", "cannot read dataset")
    npz("no_labels", "no labels", X=X)
    npz("fractional_labels", "not an integer", X=X, y=y + 0.5)
    npz("nan_feature", "not a finite number", X=np.where(np.arange(X.size).reshape(X.shape) == 7,
                                                           np.nan, X), y=y)
    npz("zero_rows", "0 rows", X=X[:0], y=y[:0])
    npz("wrong_width", "expects 64 features", X=X[:, :63], y=y)
    npz("labels_per_row", "one per row", X=X, y=y[:-1])
    npz("pickled", "cannot read its arrays",
        X=np.array([object(), 1], dtype=object), y=np.array([1, 2]))
    csv("csv_no_label", "no labels", "a,b\n1,2\n")
    csv("csv_ragged", "line 3 has 2 values", "label,a,b\n1,2,3\n1,2\n")
    csv("csv_text", "'x' is not a number", "label,a\n1,x\n")
    csv("csv_inf", "not a finite number", "label,a\n1,inf\n")
    csv("csv_label", "label '1.5' is not an integer", "label,a\n1.5,2\n")
    csv("csv_header_only", "0 rows", "label,a\n")
    return out


def test_bad_datasets_are_refused_and_nothing_is_stored(settings, db, digits, cli, capsys,
                                                        tmp_path):
    store_root = settings.model_store / "sha256"
    artifacts_before = sorted(store_root.rglob("*.onnx"))
    audit_before = service.list_audit(db, limit=1)[0]["id"]
    for name, (path, fragment) in bad_datasets(tmp_path, digits["X"], digits["y"]).items():
        status, out, err = cli(capsys, "models", "evaluate", "digits", "3", "--dataset",
                               str(path))
        assert status == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gateway: invalid_input:"), (name, err)
        assert fragment in lines[0], (name, lines[0])
        assert out == ""
    assert evaluations.list_evaluations(db, "digits", 3) == []
    assert service.list_audit(db, limit=1)[0]["id"] == audit_before
    assert sorted(store_root.rglob("*.onnx")) == artifacts_before


def test_dataset_larger_than_the_limit_is_refused(examples_dir):
    path = examples_dir / "digits_test.npz"
    with pytest.raises(PayloadTooLarge, match="GATEWAY_MAX_MODEL_BYTES"):
        load_dataset(path, max_bytes=path.stat().st_size - 1)


def test_evaluate_and_show_through_the_cli(settings, db, digits, examples_dir, cli, capsys):
    npz = str(examples_dir / "digits_test.npz")
    status, out, err = cli(capsys, "models", "evaluate", "digits", "3", "--dataset", npz,
                           "--json")
    assert status == 0, err
    record = orjson.loads(out)
    want = expected_metrics(digits["paths"]["mlp"], digits["X"], digits["y"])
    assert_metrics_equal(record["metrics"], want)
    assert record["created_by"].startswith("cli")
    status, out, err = cli(capsys, "models", "show", "digits", "3")
    assert status == 0, err
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("evaluation:"))
    assert f"accuracy {want['accuracy']:.4f}" in line
    assert f"log loss {want['log_loss']:.4f}" in line
    assert f"digits_test.npz {record['dataset']['sha256'][:12]} (450 rows" in line
    status, out, _ = cli(capsys, "models", "show", "digits", "3", "--json")
    shown = orjson.loads(out)
    assert shown["evaluation"]["id"] == record["id"] and shown["gate"] is None
    assert shown["vs_parent"] is None  # the example MLP has no parent


def test_metrics_follow_sklearn_when_classes_are_missing():
    """Classes are the union of labels and predictions; never-predicted classes have precision
    0 and a class that is only predicted has recall 0 and support 0."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    predicted = np.where(rng.random(300) < 0.7, y, rng.integers(0, 6, 300))
    predicted[predicted == 2] = 3  # class 2 is never predicted
    probabilities = rng.dirichlet(np.ones(6), 300)
    got = classification_metrics(y, predicted, probabilities)
    classes = np.union1d(y, predicted)
    precision, recall, _, support = skm.precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert [got["per_class"][str(c)]["precision"] for c in classes] == pytest.approx(precision)
    assert [got["per_class"][str(c)]["recall"] for c in classes] == pytest.approx(recall)
    assert [got["per_class"][str(c)]["support"] for c in classes] == list(support)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, probabilities, labels=range(6)))

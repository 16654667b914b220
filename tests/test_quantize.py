"""INT8 dynamic quantization: the MLP's quantized copy is registered as its child, evaluated on
the parent's dataset, smaller and about as accurate (checked against onnxruntime + sklearn run
here), and `models show` prints the comparison; models with nothing to quantize are refused
naming their operators, registering nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from sklearn.metrics import accuracy_score

from gateway.lifecycle.datasets import load_dataset
from gateway.lifecycle.evaluation import evaluate
from gateway.lifecycle.quantize import quantize
from gateway.web.app import create_app
from registry import evaluations, service, tokens
from registry.errors import InvalidInput
from registry.store import ArtifactStore


def accuracy_of(data: bytes, X: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return float(accuracy_score(y, session.run(["label"], {"input": X})[0]))


def versions(db) -> list[int]:
    return [v["version"] for v in service.list_models(db)[0]["versions"]]


def test_quantized_mlp_is_smaller_and_as_accurate(settings, db, digits, examples_dir, cli,
                                                  capsys, caplog):
    store = ArtifactStore(settings.model_store)
    parent_eval = evaluate(db, store, "digits", 3, load_dataset(
        examples_dir / "digits_test.npz", settings.max_model_bytes), "tests")
    with caplog.at_level(logging.INFO):
        result = quantize(db, store, "digits", 3, "tests")  # the parent's dataset, from the store
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]

    child = result["child"]
    assert child["version"] == 4 and child["parent_version"] == 3
    quantization = child["params"]["quantization"]
    assert quantization == {"method": "dynamic", "weight_type": "QInt8",
                            "onnxruntime": ort.__version__}
    child_bytes = store.read(child["sha256"])
    ops = {node.op_type for node in onnx.load_from_string(child_bytes).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "MatMul" not in ops

    # independent figures: file sizes, and accuracy from onnxruntime + sklearn here
    parent_bytes = digits["paths"]["mlp"].read_bytes()
    X, y = digits["X"], digits["y"]
    size_ratio = len(child_bytes) / len(parent_bytes)
    delta = accuracy_of(child_bytes, X, y) - accuracy_of(parent_bytes, X, y)
    assert size_ratio < 0.6
    assert abs(delta) < 0.02
    vs = result["vs_parent"]
    assert vs["size_ratio"] == pytest.approx(size_ratio)
    assert vs["accuracy_delta"] == pytest.approx(delta, abs=1e-12)
    assert 0.1 < vs["latency_p50_ratio"] < 10  # a sanity bound, not a benchmark
    assert result["evaluations"]["parent"]["id"] == parent_eval["id"]  # not evaluated twice
    child_eval = evaluations.latest_evaluation(db, "digits", 4)
    assert child_eval is not None
    assert child_eval["dataset"] == parent_eval["dataset"]

    status, out, err = cli(capsys, "models", "show", "digits", "4")
    assert status == 0, err
    line = next(ln.strip() for ln in out.splitlines() if "vs parent" in ln)
    assert line == (f"vs parent 3: size {size_ratio:.2f}x, latency p50 "
                    f"{vs['latency_p50_ratio']:.2f}x, accuracy {delta:+.4f} on dataset "
                    f"{parent_eval['dataset']['sha256'][:12]}")
    assert "lineage: parent 3" in out
    status, out, _ = cli(capsys, "models", "show", "digits", "4", "--json")
    shown = orjson.loads(out)
    assert shown["vs_parent"]["size_ratio"] == pytest.approx(size_ratio)
    assert shown["vs_parent"]["accuracy_delta"] == pytest.approx(delta, abs=1e-12)
    assert shown["evaluation"]["id"] == child_eval["id"]

    # the same over HTTP, for ops without the CLI
    app = create_app(settings)
    try:
        token = tokens.create_token(db, "ops", "q-ops", "tests")
        record = app.test_client().get("/admin/models/digits/versions/4",
                                       headers={"Authorization": f"Bearer {token}"}).get_json()
    finally:
        app.extensions["mgw"].close()
    assert record["vs_parent"]["size_ratio"] == pytest.approx(size_ratio)
    assert record["evaluation"]["id"] == child_eval["id"] and record["gate"] is None


def test_cli_quantize_with_a_dataset_evaluates_the_parent_too(db, digits, examples_dir, cli,
                                                              capsys):
    status, out, err = cli(capsys, "models", "quantize", "digits", "3", "--dataset",
                           str(examples_dir / "digits_test.npz"))
    assert status == 0, err
    assert out.startswith("registered digits version 4 (INT8 dynamic quantization of "
                          "version 3")
    assert "vs parent 3: size 0.4" in out
    parent_eval = evaluations.latest_evaluation(db, "digits", 3)
    child_eval = evaluations.latest_evaluation(db, "digits", 4)
    assert parent_eval is not None and child_eval is not None
    assert parent_eval["dataset"]["sha256"] == child_eval["dataset"]["sha256"]
    actions = [e["action"] for e in service.list_audit(db, model="digits", limit=3)]
    assert actions == ["version.evaluate", "version.register", "version.evaluate"]


@pytest.mark.parametrize(("name", "operators"), [
    ("forest", "TreeEnsembleClassifier (ai.onnx.ml)"),
    ("logreg", "LinearClassifier (ai.onnx.ml), Normalizer (ai.onnx.ml), Scaler (ai.onnx.ml)")])
def test_models_without_quantizable_operators_are_refused(settings, db, digits, examples_dir,
                                                          cli, capsys, name, operators):
    store = ArtifactStore(settings.model_store)
    dataset = load_dataset(examples_dir / "digits_test.npz", settings.max_model_bytes)
    version = digits["versions"][name]
    with pytest.raises(InvalidInput) as refused:
        quantize(db, store, "digits", version, "tests", dataset)
    assert f"its operators are {operators}" in refused.value.message
    assert "Nothing was registered" in refused.value.message
    status, _, err = cli(capsys, "models", "quantize", "digits", str(version), "--dataset",
                         str(examples_dir / "digits_test.npz"))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert operators in err
    assert versions(db) == [1, 2, 3]
    assert evaluations.list_evaluations(db, "digits", version) == []


def test_quantize_without_any_dataset_registers_nothing(settings, db, digits):
    with pytest.raises(InvalidInput, match="evaluate the parent first .* or pass --dataset"):
        quantize(db, ArtifactStore(settings.model_store), "digits", 3, "tests")
    assert versions(db) == [1, 2, 3]

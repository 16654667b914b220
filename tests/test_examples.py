"""The example models: reproducible bytes, the tensor signature the gateway serves, real metrics."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.examples import (
    DATASET,
    ExampleModel,
    build_examples,
    dataset_info,
    load_test_split,
)

NAMES = ["logreg", "forest", "mlp"]
FILES = [*(f"{name}.onnx" for name in NAMES), "digits_test.npz"]


@dataclass(frozen=True)
class Built:
    first_dir: Path
    second_dir: Path
    models: dict[str, ExampleModel]
    order: list[str]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build once into each of two fresh folders; every test reads from these."""
    first_dir = tmp_path_factory.mktemp("examples_a")
    second_dir = tmp_path_factory.mktemp("examples_b")
    models = build_examples(first_dir)
    build_examples(second_dir)
    return Built(
        first_dir=first_dir,
        second_dir=second_dir,
        models={m.name: m for m in models},
        order=[m.name for m in models],
    )


@pytest.fixture(scope="module")
def test_split(built: Built) -> tuple[np.ndarray, np.ndarray]:
    return load_test_split(built.first_dir)


def test_two_builds_write_identical_bytes(built: Built) -> None:
    for filename in FILES:
        first, second = built.first_dir / filename, built.second_dir / filename
        assert first.is_file() and second.is_file(), filename
        assert _sha256(first) == _sha256(second), filename
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in built.first_dir.iterdir()) == sorted(FILES)


def test_rebuilding_over_existing_files_is_idempotent(built: Built) -> None:
    before = {f: _sha256(built.second_dir / f) for f in FILES}
    build_examples(built.second_dir)
    assert {f: _sha256(built.second_dir / f) for f in FILES} == before
    assert sorted(p.name for p in built.second_dir.iterdir()) == sorted(FILES)


def test_registration_order_lineage_and_fields(built: Built) -> None:
    assert built.order == NAMES
    assert built.models["logreg"].parent is None
    assert built.models["forest"].parent == "logreg"
    assert built.models["mlp"].parent == "logreg"
    for name, model in built.models.items():
        assert model.path == built.first_dir / f"{name}.onnx"
        assert model.description and model.description.endswith(".")
        json.dumps(model.params)  # must be JSON-serialisable for the registry
        assert set(model.metrics) == {"accuracy", "latency_ms_batch1"}
        latency = model.metrics["latency_ms_batch1"]
        assert math.isfinite(latency) and latency > 0


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_input_to_label_and_probabilities(built: Built, name: str) -> None:
    path = built.models[name].path
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    domains = [entry.domain for entry in proto.opset_import]
    assert len(domains) == len(set(domains))

    session = _session(path)
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type) == ("input", "tensor(float)")
    assert len(inp.shape) == 2 and not isinstance(inp.shape[0], int) and inp.shape[1] == 64

    label, probabilities = session.get_outputs()
    assert (label.name, label.type) == ("label", "tensor(int64)")
    assert len(label.shape) == 1 and not isinstance(label.shape[0], int)
    assert (probabilities.name, probabilities.type) == ("probabilities", "tensor(float)")
    assert len(probabilities.shape) == 2 and not isinstance(probabilities.shape[0], int)
    assert probabilities.shape[1] == 10


@pytest.mark.parametrize("name", NAMES)
def test_outputs_agree_with_reported_metrics(
    built: Built, test_split: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    X, y = test_split
    labels, probabilities = _session(built.models[name].path).run(None, {"input": X})
    assert labels.dtype == np.int64 and labels.shape == y.shape
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(X), 10)
    accuracy = float(np.mean(labels == y))
    assert accuracy == pytest.approx(built.models[name].metrics["accuracy"], abs=1e-9)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probabilities >= 0)
    # the label is the most probable class (ties aside, which do not occur on this split)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))


def test_models_really_differ_in_accuracy(built: Built) -> None:
    accuracy = {name: m.metrics["accuracy"] for name, m in built.models.items()}
    assert len(set(accuracy.values())) >= 2, accuracy
    assert accuracy["forest"] > 0.9 and accuracy["mlp"] > 0.9, accuracy
    # the baseline is under-trained on purpose: both challengers beat it
    assert accuracy["logreg"] < min(accuracy["forest"], accuracy["mlp"]), accuracy


def test_test_split_file(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = test_split
    assert X.dtype == np.float32 and X.shape == (450, 64)
    assert y.dtype == np.int64 and y.shape == (450,)
    assert X.min() >= 0 and X.max() <= 16
    assert set(np.unique(y).tolist()) == set(range(10))


def test_load_test_split_rejects_wrong_dtypes(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits_test.npz", X=np.zeros((3, 64)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="float32"):
        load_test_split(tmp_path)


def test_dataset_info_identifies_the_data() -> None:
    info = dataset_info()
    assert info == DATASET
    assert info["name"] == "sklearn-digits"
    assert info["version"] == "1797x64"
    assert len(info["sha256"]) == 64 and int(info["sha256"], 16) >= 0
    info["name"] = "changed"  # a copy: callers cannot alter the module's record
    assert DATASET["name"] == "sklearn-digits"


def test_models_carry_their_provenance(built: Built) -> None:
    for name, model in built.models.items():
        proto = onnx.load(str(model.path))
        metadata = {p.key: p.value for p in proto.metadata_props}
        assert metadata["example_name"] == name
        assert metadata["dataset_sha256"] == DATASET["sha256"]


def test_bytes_do_not_depend_on_the_process_hash_seed(tmp_path: Path) -> None:
    """Set iteration order follows PYTHONHASHSEED; the files must not."""
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "models.examples", str(out)], env=env,
                       check=True, capture_output=True, timeout=120)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(out.glob("*.onnx"))})
    assert digests[0] == digests[1] and len(digests[0]) == 3

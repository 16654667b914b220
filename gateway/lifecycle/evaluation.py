"""Evaluate a version on a labelled dataset, in-process, and record its metrics beside it.

The gate decides on these numbers, so they come from the registered artifact itself (read
through the store, which verifies its sha256, and checked for external data like the runtime
does), not from metrics claimed at registration. The dataset's bytes are kept in the artifact
store under their sha256 so a later evaluation (a quantized child) can reuse exactly the same
rows without the file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from gateway.lifecycle.datasets import Dataset
from gateway.lifecycle.scores import classification_metrics, latency_summary
from registry import evaluations, service
from registry.db import Database
from registry.errors import InsufficientStorage, InvalidInput, Unavailable
from registry.inspect_onnx import InvalidModel, refuse_external_data, session_options
from registry.records import VersionRecord
from registry.store import ArtifactError, ArtifactStoreFull, Store

log = logging.getLogger(__name__)

BATCH_ROWS = 1024
LATENCY_ROWS = 200
WARMUP_RUNS = 10
INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP64": np.float64}


def single_input_name(record: VersionRecord) -> str | None:
    """The name of the version's only input (what a `.npz` may call its features), if one."""
    inputs = record["inputs"]
    return inputs[0]["name"] if len(inputs) == 1 else None


def load_session(store: Store, sha256: str) -> ort.InferenceSession:
    """A one-thread session on the stored artifact: evaluation shares the host with serving."""
    try:
        data = store.read(sha256)
    except ArtifactError as exc:
        raise Unavailable(str(exc)) from None
    try:
        refuse_external_data(onnx.load_from_string(data))
    except InvalidModel as exc:
        raise InvalidInput(str(exc)) from None
    return ort.InferenceSession(data, sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])


def check_fits(record: VersionRecord, dataset: Dataset) -> tuple[str, type[np.floating[Any]]]:
    """The input name and dtype the dataset's rows are fed as, or why they cannot be."""
    where = f"{record['model']} version {record['version']}"
    inputs = record["inputs"]
    if len(inputs) != 1:
        raise InvalidInput(f"{where} takes {len(inputs)} inputs; evaluation feeds a dataset to a "
                           "model with one input")
    spec = inputs[0]
    shape = spec["shape"]
    if spec["datatype"] not in INPUT_DTYPES or len(shape) != 2 or shape[0] != -1:
        raise InvalidInput(f"{where} input {spec['name']!r} is {spec['datatype']}{shape}; "
                           "evaluation needs a float input of shape [-1, features]")
    if shape[1] not in (-1, dataset.features):
        raise InvalidInput(f"{where} input {spec['name']!r} expects {shape[1]} features; dataset "
                           f"{dataset.name} has {dataset.features}")
    return spec["name"], INPUT_DTYPES[spec["datatype"]]


def _predictions(outputs: dict[str, np.ndarray], rows: int, where: str
                 ) -> tuple[np.ndarray, np.ndarray | None, str, str | None]:
    """Predicted labels and probabilities, found by shape and type: the label output is an
    integer [rows] tensor, the probabilities a float [rows, classes] one."""
    label_name = next((n for n, a in outputs.items()
                       if a.dtype.kind in "iu" and a.shape in ((rows,), (rows, 1))), None)
    prob_name = next((n for n, a in outputs.items()
                      if a.dtype.kind == "f" and a.ndim == 2 and a.shape[0] == rows), None)
    probabilities = outputs[prob_name] if prob_name else None
    if label_name is not None:
        return (outputs[label_name].reshape(rows).astype(np.int64), probabilities, label_name,
                prob_name)
    if probabilities is not None:
        return (np.argmax(probabilities, axis=1).astype(np.int64), probabilities,
                f"argmax({prob_name})", prob_name)
    shapes = {n: list(a.shape) for n, a in outputs.items()}
    raise InvalidInput(f"{where} has no label output (integer [rows]) and no probability output "
                       f"(float [rows, classes]); its outputs are {shapes}")


def run_dataset(session: ort.InferenceSession, input_name: str, X: np.ndarray
                ) -> tuple[dict[str, np.ndarray], float]:
    """Every output over the whole dataset (batched) and the batched run's rows per second."""
    parts: dict[str, list[np.ndarray]] = {}
    names = [o.name for o in session.get_outputs()]
    started = time.perf_counter()
    for start in range(0, X.shape[0], BATCH_ROWS):
        results = session.run(names, {input_name: X[start:start + BATCH_ROWS]})
        for name, value in zip(names, results, strict=True):
            parts.setdefault(name, []).append(np.asarray(value))
    elapsed = time.perf_counter() - started
    return ({name: np.concatenate(values) for name, values in parts.items()},
            X.shape[0] / elapsed if elapsed > 0 else float("inf"))


def one_row_latencies(session: ort.InferenceSession, input_name: str, X: np.ndarray
                      ) -> list[float]:
    """Seconds per one-row run, after a warm-up: what a single /predict costs the model."""
    first = X[:1]
    for _ in range(WARMUP_RUNS):
        session.run(None, {input_name: first})
    seconds = []
    for i in range(min(LATENCY_ROWS, X.shape[0])):
        row = X[i:i + 1]
        started = time.perf_counter()
        session.run(None, {input_name: row})
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(record: VersionRecord, session: ort.InferenceSession,
            dataset: Dataset) -> dict[str, Any]:
    """The metrics of one version on one dataset (nothing recorded)."""
    input_name, dtype = check_fits(record, dataset)
    X = np.ascontiguousarray(dataset.X, dtype=dtype)
    outputs, rows_per_s = run_dataset(session, input_name, X)
    where = f"{record['model']} version {record['version']}"
    predicted, probabilities, label_name, prob_name = _predictions(outputs, dataset.rows, where)
    metrics = classification_metrics(dataset.y, predicted, probabilities)
    latencies = one_row_latencies(session, input_name, X)
    metrics.update(latency_summary(latencies))
    metrics.update({"latency_runs": len(latencies), "rows_per_s": rows_per_s,
                    "label_output": label_name, "probability_output": prob_name})
    return metrics


def _reference(X: np.ndarray) -> dict[str, Any] | None:
    """The drift reference of the dataset; its absence must never cost the evaluation."""
    try:
        from gateway.lifecycle.drift import reference_stats

        return reference_stats(X)
    except Exception as exc:  # NotImplementedError while drift is being built, or any bug
        log.warning("no drift reference stored with this evaluation: %s",
                    exc.__class__.__name__)
        return None


def evaluate(db: Database, store: Store, model: str, version_ref: str | int,
             dataset: Dataset, actor: str) -> dict[str, Any]:
    """Run the version over the dataset, keep the dataset's bytes, record the evaluation."""
    record = service.get_version(db, model, version_ref)
    check_fits(record, dataset)  # before loading anything: a wrong dataset is the likely error
    metrics = measure(record, load_session(store, record["sha256"]), dataset)
    try:
        store.put(dataset.raw)
    except ArtifactStoreFull as exc:
        raise InsufficientStorage(str(exc)) from None
    except ArtifactError as exc:
        raise Unavailable(str(exc)) from None
    return evaluations.add_evaluation(
        db, model, record["version"],
        {"name": dataset.name, "sha256": dataset.sha256, "rows": dataset.rows},
        metrics, _reference(dataset.X), actor)


def evaluate_and_gate(db: Database, store: Store, model: str, version_ref: str | int,
                      dataset: Dataset, actor: str) -> dict[str, Any]:
    """`evaluate`, then the gate's verdict on the version with this evaluation (`gate`: None
    when the model has no gate): what `gateway models evaluate` and
    `POST /admin/models/{name}/versions/{v}/evaluations` answer."""
    from gateway.lifecycle.gate import check_gate

    result = evaluate(db, store, model, version_ref, dataset, actor)
    gate = check_gate(db, model, result["version"])
    result["gate"] = gate.to_dict() if gate else None
    return result

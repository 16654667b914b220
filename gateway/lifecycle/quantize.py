"""Compression: an INT8 dynamic-quantized copy of a version, registered as its child and
evaluated on the parent's dataset so the trade-off is measured, not assumed.

Dynamic quantization (onnxruntime.quantization.quantize_dynamic) stores the weights of MatMul,
Gemm, Conv, Attention, LSTM... as int8 and quantizes activations at run time; it needs no
calibration data. Models made of other operators (tree ensembles, ai.onnx.ml linear
classifiers) come back unchanged, so such a result is refused, naming the model's operators,
rather than registered as a "quantized" copy that is not one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from gateway.lifecycle.datasets import Dataset, parse_dataset
from gateway.lifecycle.evaluation import check_fits, evaluate, single_input_name
from gateway.lifecycle.summary import vs_parent
from registry import evaluations, service
from registry.db import Database
from registry.errors import InvalidInput, Unavailable
from registry.records import VersionRecord
from registry.store import ArtifactError, Store

WEIGHT_TYPE = "QInt8"
# what quantize_dynamic puts in a graph it did quantize
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention", "QGemm",
                 "QuantizeLinear", "DequantizeLinear"}


class _DropPreprocessHint(logging.Filter):
    """quantize_dynamic logs a "consider pre-processing" warning on the root logger on every
    call; it is advice for hand-tuned image models, not something an operator can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    hint = _DropPreprocessHint()
    # logging.warning() installs a stderr handler on a root logger that has none; a null
    # handler for the duration stops that side effect from outliving the call
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _op_types(graph: onnx.GraphProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs included."""
    found: set[tuple[str, str]] = set()
    for node in graph.node:
        found.add((node.domain or "ai.onnx", node.op_type))
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found |= _op_types(attribute.g)
            for sub in attribute.graphs:
                found |= _op_types(sub)
    return found


def _is_quantized(op_type: str) -> bool:
    return op_type in QUANTIZED_OPS or op_type.startswith("QLinear")


def quantize_bytes(data: bytes, where: str) -> bytes:
    """The INT8 dynamic-quantized model, or InvalidInput when nothing in it can be quantized."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="mgw-quantize-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        source.write_bytes(data)
        try:
            with _quiet_quantizer():
                quantize_dynamic(source, target, weight_type=QuantType.QInt8)
            quantized = target.read_bytes()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
            raise InvalidInput(f"{where} cannot be quantized: onnxruntime.quantization "
                               f"failed: {first}") from None
    original = _op_types(onnx.load_from_string(data).graph)
    added = _op_types(onnx.load_from_string(quantized).graph) - original
    if not any(_is_quantized(op) for _, op in added):
        names = ", ".join(op if domain == "ai.onnx" else f"{op} ({domain})"
                          for domain, op in sorted(original))
        raise InvalidInput(
            f"{where} cannot be quantized: INT8 dynamic quantization covers MatMul, Gemm, Conv, "
            f"Attention, LSTM and similar operators, and this model has none; its operators are "
            f"{names}. Nothing was registered")
    return quantized


def _parent_dataset(db: Database, store: Store, model: str, parent: VersionRecord,
                    max_bytes: int) -> Dataset:
    """The dataset of the parent's latest evaluation, read back from the store."""
    latest = evaluations.latest_evaluation(db, model, parent["version"])
    if latest is None:
        raise InvalidInput(
            f"{model} version {parent['version']} has no evaluation to compare the quantized "
            f"copy with: evaluate the parent first (gateway models evaluate {model} "
            f"{parent['version']} --dataset FILE) or pass --dataset")
    try:
        raw = store.read(latest["dataset"]["sha256"])
    except ArtifactError as exc:
        raise Unavailable(f"the dataset of evaluation {latest['id']} is not in the store "
                          f"({exc}); pass --dataset") from None
    return parse_dataset(latest["dataset"]["name"], raw, max_bytes, single_input_name(parent))


def quantize(db: Database, store: Store, model: str, version_ref: str | int,
             actor: str, dataset: Dataset | None = None, *,
             max_bytes: int = 512 * 1024 * 1024) -> dict[str, Any]:
    """Register the INT8 copy of a version as a new version (its parent the original) and
    evaluate both on one dataset; refused, registering nothing, without a usable dataset or
    when the model has nothing to quantize."""
    parent = service.get_version(db, model, version_ref)
    where = f"{model} version {parent['version']}"
    try:
        data = store.read(parent["sha256"])
    except ArtifactError as exc:
        raise Unavailable(str(exc)) from None
    quantized = quantize_bytes(data, where)  # first: no dataset helps a model that cannot be
    if dataset is None:
        dataset = _parent_dataset(db, store, model, parent, max_bytes)
    check_fits(parent, dataset)
    parent_eval = evaluations.latest_evaluation(db, model, parent["version"], dataset.sha256)
    if parent_eval is None:
        parent_eval = evaluate(db, store, model, parent["version"], dataset, actor)
    metadata = {
        "description": f"INT8 dynamic quantization of version {parent['version']}",
        "parent_version": parent["version"],
        "params": {"quantization": {"method": "dynamic", "weight_type": WEIGHT_TYPE,
                                    "onnxruntime": ort.__version__}},
    }
    if parent.get("dataset"):
        metadata["dataset"] = parent["dataset"]  # trained on the same data as its parent
    child = service.register_version(db, store, model, quantized, metadata, actor, max_bytes)
    child_eval = evaluate(db, store, model, child["version"], dataset, actor)
    return {"parent": parent, "child": child, "evaluations": {"parent": parent_eval,
                                                              "child": child_eval},
            "vs_parent": vs_parent(parent, parent_eval, child, child_eval)}



def quantized_view(result: dict[str, Any]) -> dict[str, Any]:
    """What `POST /admin/models/{name}/versions/{v}/quantize` and `gateway models quantize
    --json` answer: the new version's record, and the quantization beside it."""
    return {**result["child"], "quantization": {k: v for k, v in result.items()
                                                if k != "child"}}

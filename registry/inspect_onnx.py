"""Check an uploaded file is a servable ONNX model and read its signature.

Everything here runs before the registry stores a byte: a file that does not parse, fails
`onnx.checker`, will not load in onnxruntime, or exchanges non-tensor values is refused with a
message that says which of these it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx
import onnxruntime as ort

# onnxruntime element types -> Open Inference Protocol datatypes
ORT_TO_V2: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class InvalidModel(ValueError):
    """The file is not a model the gateway can serve; the message says why."""


@dataclass(frozen=True)
class Signature:
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    opset: int


def _tensor_specs(args: list[Any], kind: str) -> list[dict[str, Any]]:
    specs = []
    for arg in args:
        datatype = ORT_TO_V2.get(arg.type)
        if datatype is None:
            raise InvalidModel(
                f"{kind} {arg.name!r} has type {arg.type}; only tensors can be served "
                "(for skl2onnx classifiers, export with options zipmap=False)"
            )
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        specs.append({"name": arg.name, "datatype": datatype, "shape": shape})
    return specs


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for graph in attribute.graphs:
                yield from _graph_tensors(graph)


def refuse_external_data(proto: onnx.ModelProto) -> None:
    """Refuse tensors whose bytes live outside the file.

    onnxruntime, given a model as bytes, resolves an external-data location against the
    process's working directory: a crafted model could read the gateway's own files (its
    secret key, its SQLite database) into a tensor and return them from `/predict`. Such bytes
    are also outside the sha256 that makes a version immutable, so they are never served.
    """
    tensors = itertools.chain(_graph_tensors(proto.graph),
                              *(_node_tensors(f.node) for f in proto.functions))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise InvalidModel(
                f"tensor {tensor.name!r} keeps its data in an external file; only "
                "self-contained models can be served (save with save_as_external_data=False)")


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Options for a server with one process per core: no thread pools competing for cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def inspect_model(data: bytes) -> Signature:
    """Validate `data` as a servable ONNX model and return its signature, or raise InvalidModel."""
    if not data:
        raise InvalidModel("the file is empty")
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, but also others on garbage
        raise InvalidModel(
            f"not an ONNX file: it does not parse ({exc.__class__.__name__})"
        ) from None
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModel("not an ONNX file: it parses to an empty graph")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise InvalidModel(f"onnx.checker rejected the model: {_first_line(exc)}") from None
    refuse_external_data(proto)
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise InvalidModel(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    opset = next(
        (imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 0
    )
    return Signature(
        inputs=_tensor_specs(session.get_inputs(), "input"),
        outputs=_tensor_specs(session.get_outputs(), "output"),
        opset=int(opset),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]

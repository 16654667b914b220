"""The benchmark MLP: input [N, 512], three Gemm+Relu layers of width 1024, output [N, 10]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_mlp(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    widths = [512, 1024, 1024, 1024, 10]
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}" if i < len(widths) - 2 else "logits"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"]))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        else:
            nodes.append(helper.make_node("Identity", [f"g{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path

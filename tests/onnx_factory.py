"""Small real ONNX models built with onnx.helper for tests that need many distinct files."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def add_constant_model(constant: float, width: int = 4, opset: int = 17) -> bytes:
    """y = x + constant, x float [N, width]: distinct bytes for every constant."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    c = numpy_helper.from_array(np.full((width,), constant, dtype=np.float32), name="c")
    node = helper.make_node("Add", ["x", "c"], ["y"])
    graph = helper.make_graph([node], "add_constant", [x], [y], initializer=[c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def unloadable_model() -> bytes:
    """Passes onnx.checker (custom domains are not checked) but onnxruntime has no kernel."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example.missing")
    graph = helper.make_graph([node], "unloadable", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.missing", 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()


def checker_failing_model() -> bytes:
    """Parses as ONNX but onnx.checker refuses it: a node reads an input nobody produces."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Add", ["x", "missing"], ["y"])
    graph = helper.make_graph([node], "broken", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()

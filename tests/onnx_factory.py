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


def slow_digits_model(width: int = 1024, layers: int = 128) -> bytes:
    """Takes the digits input (`input` float [N, 64]) and burns CPU: a deep, wide MatMul chain
    that re-uses one hidden weight matrix, so the file stays small (~4 MB) while each row costs
    `layers * width**2` multiply-adds.

    Its outputs are named like the examples' so it can stand in as a (slow) shadow version.
    """
    rng = np.random.default_rng(0)
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10]),
               helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])]
    weights = {
        "w_in": rng.standard_normal((64, width)) / 8.0,
        "w_hidden": rng.standard_normal((width, width)) / np.sqrt(width),
        "w_out": rng.standard_normal((width, 10)) / np.sqrt(width),
    }
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    nodes, current = [], "input"
    for i, name in enumerate(["w_in"] + ["w_hidden"] * layers + ["w_out"]):
        nodes.append(helper.make_node("MatMul", [current, name], [f"m{i}"]))
        current = f"m{i}"
        if name != "w_out":
            nodes.append(helper.make_node("Tanh", [current], [f"t{i}"]))
            current = f"t{i}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(nodes, "slow", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def weakened_digits_model(noise_share: float = 0.7, seed: int = 0) -> bytes:
    """A digits classifier made worse on purpose: a logistic regression trained on labels of
    which `noise_share` were replaced at random. Same signature as the examples (`input` float
    [N, 64] -> `label`, `probabilities`), so it can share a traffic policy with them."""
    import warnings

    import numpy as np
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    replace = rng.random(len(y)) < noise_share
    noisy[replace] = rng.integers(0, 10, int(replace.sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        model = LogisticRegression(max_iter=200).fit(X.astype(np.float32), noisy)
    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, 64]))],
                  options={LogisticRegression: {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()

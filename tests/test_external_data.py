"""A model whose tensors point at files outside it is refused, before anything is stored.

Expectation: onnxruntime would resolve such a path against the gateway's working directory and
serve the file's bytes (its secret key, its SQLite database) as a tensor; the gateway answers
400 naming the tensor, stores no artifact and creates no version.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper

from registry.inspect_onnx import InvalidModel, inspect_model
from tests.conftest import error_of


def leaking_model(location: str) -> bytes:
    """A model that returns an initializer whose 16 bytes are in the file at `location`."""
    weight = TensorProto(name="stolen", data_type=TensorProto.UINT8, dims=[16])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Identity", ["stolen"], ["leak"])], "leak",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("leak", TensorProto.UINT8, [16])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_the_premise_onnxruntime_reads_a_relative_external_file(tmp_path, monkeypatch):
    """Without the check, the bytes of a file next to the gateway come out of the model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret_key").write_bytes(b"0123456789abcdef")
    onnx.checker.check_model(onnx.load_from_string(leaking_model("secret_key")))
    session = ort.InferenceSession(leaking_model("secret_key"),
                                   providers=["CPUExecutionProvider"])
    leaked = session.run(None, {"input": np.zeros((1, 64), np.float32)})[0]
    assert leaked.tobytes() == b"0123456789abcdef"


def test_inspect_model_refuses_external_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret_key").write_bytes(b"0123456789abcdef")
    with pytest.raises(InvalidModel, match="'stolen' keeps its data in an external file"):
        inspect_model(leaking_model("secret_key"))


def test_registration_of_a_leaking_model_stores_nothing(client, ops, settings, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret_key").write_bytes(b"0123456789abcdef")
    response = client.post("/admin/models/leak/versions", headers=ops, data={
        "file": (io.BytesIO(leaking_model("secret_key")), "leak.onnx"),
        "metadata": orjson.dumps({"description": "steals a file"}).decode()})
    assert response.status_code == 400
    assert "external file" in error_of(response)["message"]
    stored = [p for p in settings.model_store.rglob("*") if p.is_file()] \
        if settings.model_store.exists() else []
    assert stored == []
    listing = client.get("/admin/models", headers=ops).get_json()
    assert all(m["name"] != "leak" for m in listing["models"]), listing

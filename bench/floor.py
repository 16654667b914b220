"""The floor: the thinnest Flask app that serves one ONNX file, for the gateway to be measured
against. What a user would write by hand: no validation, routing, auth or logging; one session
loaded at import, over the same three wire formats as the gateway:

- `POST /predict`: `{"inputs": {"input": [[...]]}}` -> `{"outputs": {...}}`
- `POST /v2/models/<name>/infer`, JSON: tensors with flattened `data`
- the same route with the binary tensor extension (`Inference-Header-Content-Length`); outputs
  come back binary when asked (`outputs[].parameters.binary_data` or `binary_data_output`).

    BENCH_MODEL=m.onnx gunicorn -k sync -w 2 bench.floor:app                     # reference
    BENCH_MODEL=m.onnx gunicorn -c python:gateway.web.gunicorn_conf bench.floor:app  # gateway's
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from flask import Flask, Response, request

from registry.inspect_onnx import session_options

app = Flask(__name__)
session = ort.InferenceSession(os.environ["BENCH_MODEL"], sess_options=session_options(1),
                               providers=["CPUExecutionProvider"])
output_names = [o.name for o in session.get_outputs()]
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
V2_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    mimetype="application/json")


@app.post("/predict")
def predict() -> Response:
    body = orjson.loads(request.get_data())
    feeds = {k: np.asarray(v, dtype=np.float32) for k, v in body["inputs"].items()}
    outputs = session.run(output_names, feeds)
    return _json({"outputs": dict(zip(output_names, outputs, strict=True))})


@app.post("/v2/models/<name>/infer")
def infer(name: str) -> Response:
    body = request.get_data()
    length = request.headers.get("Inference-Header-Content-Length")
    header = orjson.loads(body[:int(length)] if length else body)
    raw = memoryview(body)[int(length):] if length else memoryview(b"")
    feeds, offset = {}, 0
    for t in header["inputs"]:
        dtype = DTYPES[t["datatype"]]
        size = t.get("parameters", {}).get("binary_data_size")
        if size is None:
            arr = np.asarray(t["data"], dtype=dtype)
        else:
            arr = np.frombuffer(raw[offset:offset + size], dtype=dtype)
            offset += size
        feeds[t["name"]] = arr.reshape(t["shape"])
    default = header.get("parameters", {}).get("binary_data_output", False)
    wanted = {o["name"]: o.get("parameters", {}).get("binary_data", default)
              for o in header.get("outputs") or [{"name": n} for n in output_names]}
    results = session.run(list(wanted), feeds)
    entries, parts = [], []
    for (out, binary), arr in zip(wanted.items(), results, strict=True):
        entry = {"name": out, "datatype": V2_NAMES[arr.dtype], "shape": list(arr.shape)}
        if binary:
            data = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            parts.append(data)
        else:
            entry["data"] = arr.ravel()
        entries.append(entry)
    head = orjson.dumps({"model_name": name, "outputs": entries},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    if not parts:
        return Response(head, mimetype="application/json")
    return Response(b"".join([head, *parts]), mimetype="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})

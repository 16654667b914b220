"""The floor: the thinnest Flask app that serves one ONNX file, for the gateway to be measured
against. Same gunicorn settings as the gateway; no validation, routing, auth or logging.

    BENCH_MODEL=path.onnx gunicorn -c python:gateway.gunicorn_conf bench.floor:app
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
input_name = session.get_inputs()[0].name
output_names = [o.name for o in session.get_outputs()]


@app.post("/predict")
def predict() -> Response:
    body = orjson.loads(request.get_data())
    x = np.asarray(body["inputs"], dtype=np.float32)
    outputs = session.run(output_names, {input_name: x})
    payload = {"outputs": dict(zip(output_names, outputs, strict=True))}
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    mimetype="application/json")

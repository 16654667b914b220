"""Malformed and hostile inference requests: each gets a 4xx in the error shape, nothing breaks."""

from __future__ import annotations

import orjson
import pytest

ROW = [0.0] * 64


def j(obj) -> bytes:
    return orjson.dumps(obj)


def predict(inputs, **extra) -> bytes:
    return j({"model": "digits", "inputs": inputs, **extra})


def v2(inputs, **extra) -> bytes:
    return j({"inputs": inputs, **extra})


def tensor(data, shape=(1, 64), datatype="FP32", name="input"):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


P, V = "/predict", "/v2/models/digits/infer"
CASES = [
    # (id, path, body, extra headers, status, code)
    ("bad-json", P, b'{"model": "digits", "inputs": [', {}, 400, "invalid_input"),
    ("empty-body", P, b"", {}, 400, "invalid_input"),
    ("json-array-body", P, b"[1, 2]", {}, 400, "invalid_input"),
    ("nan-token", P, b'{"model":"digits","inputs":[[NaN' + b",0" * 63 + b"]]}", {}, 400,
     "invalid_input"),
    ("infinity-token", P, b'{"model":"digits","inputs":[[Infinity' + b",0" * 63 + b"]]}", {},
     400, "invalid_input"),
    ("huge-number", P, predict([[1e39] + ROW[1:]]), {}, 400, "invalid_input"),
    ("rank-1", P, predict(ROW), {}, 400, "invalid_input"),
    ("rank-3", P, predict([[ROW]]), {}, 400, "invalid_input"),
    ("short-row", P, predict([ROW[:63]]), {}, 400, "invalid_input"),
    ("long-row", P, predict([ROW + [0.0]]), {}, 400, "invalid_input"),
    ("ragged", P, predict([ROW, ROW[:10]]), {}, 400, "invalid_input"),
    ("empty-batch", P, predict([]), {}, 400, "invalid_input"),
    ("string-number", P, predict([["0.5"] + ROW[1:]]), {}, 400, "invalid_input"),
    ("boolean", P, predict([[True] + ROW[1:]]), {}, 400, "invalid_input"),
    ("null-value", P, predict([[None] + ROW[1:]]), {}, 400, "invalid_input"),
    ("object-value", P, predict([[{"a": 1}] + ROW[1:]]), {}, 400, "invalid_input"),
    ("missing-input", P, predict({}), {}, 400, "invalid_input"),
    ("extra-input", P, predict({"input": [ROW], "other": [ROW]}), {}, 400, "invalid_input"),
    ("wrong-input-name", P, predict({"pixels": [ROW]}), {}, 400, "invalid_input"),
    ("no-inputs", P, j({"model": "digits"}), {}, 400, "invalid_input"),
    ("no-model", P, j({"inputs": [ROW]}), {}, 400, "invalid_input"),
    ("model-not-string", P, j({"model": 7, "inputs": [ROW]}), {}, 400, "invalid_input"),
    ("unknown-field", P, predict([ROW], extra=1), {}, 400, "invalid_input"),
    ("unknown-model", P, j({"model": "nope", "inputs": [ROW]}), {}, 404, "unknown_model"),
    ("hostile-model-name", P, j({"model": "../../etc/passwd", "inputs": [ROW]}), {}, 400,
     "invalid_input"),
    ("sql-model-name", P, j({"model": "x' OR '1'='1", "inputs": [ROW]}), {}, 400,
     "invalid_input"),
    ("long-model-name", P, j({"model": "a" * 500, "inputs": [ROW]}), {}, 400, "invalid_input"),
    ("unknown-version", P, predict([ROW]), {"X-Model-Version": "99"}, 404, "unknown_version"),
    ("zero-version", P, predict([ROW]), {"X-Model-Version": "0"}, 400, "invalid_input"),
    ("negative-version", P, predict([ROW]), {"X-Model-Version": "-1"}, 400, "invalid_input"),
    ("garbage-version", P, predict([ROW]), {"X-Model-Version": "1; DROP"}, 400,
     "invalid_input"),
    ("huge-version", P, predict([ROW]), {"X-Model-Version": "9" * 40}, 400, "invalid_input"),
    ("unknown-alias", P, predict([ROW]), {"X-Model-Version": "nobody"}, 404, "unknown_version"),
    ("bad-request-id", P, predict([ROW]), {"X-Request-Id": "has space"}, 400, "invalid_input"),
    ("long-request-id", P, predict([ROW]), {"X-Request-Id": "a" * 129}, 400, "invalid_input"),
    ("model-header-mismatch", P, predict([ROW]), {"X-Model": "other"}, 400, "invalid_input"),
    ("batch-over-limit", P, predict([ROW] * 1025), {}, 400, "invalid_input"),
    ("deep-nesting", P, b'{"model":"digits","inputs":' + b"[" * 10000 + b"]" * 10000 + b"}",
     {}, 400, "invalid_input"),
    ("over-size-body", P, b'{"model":"digits","inputs":[[' + b"0," * 3_000_000 + b"0]]}", {},
     413, "payload_too_large"),
    ("v2-bad-json", V, b"{nope", {}, 400, None),
    ("v2-wrong-datatype", V, v2([tensor(ROW, datatype="FP64")]), {}, 400, None),
    ("v2-wrong-shape", V, v2([tensor(ROW, shape=(1, 63))]), {}, 400, None),
    ("v2-data-length", V, v2([tensor(ROW[:10])]), {}, 400, None),
    ("v2-strings", V, v2([tensor(["0.1"] * 64)]), {}, 400, None),
    ("v2-missing-input", V, v2([]), {}, 400, None),
    ("v2-unknown-output", V, v2([tensor(ROW)], outputs=[{"name": "nope"}]), {}, 400, None),
    ("v2-binary-size", V, v2([{"name": "input", "shape": [1, 64], "datatype": "FP32",
                               "parameters": {"binary_data_size": 256}}]) + b"\0" * 10,
     {"Inference-Header-Content-Length": str(len(v2([{"name": "input", "shape": [1, 64],
                                                       "datatype": "FP32", "parameters": {
                                                           "binary_data_size": 256}}])))},
     400, None),
    ("v2-header-length-too-big", V, v2([tensor(ROW)]), {"Inference-Header-Content-Length":
                                                        "999999"}, 400, None),
    ("v2-header-length-garbage", V, v2([tensor(ROW)]), {"Inference-Header-Content-Length": "x"},
     400, None),
    ("v2-unknown-model", "/v2/models/nope/infer", v2([tensor(ROW)]), {}, 404, None),
    ("v2-unknown-version", "/v2/models/digits/versions/42/infer", v2([tensor(ROW)]), {}, 404,
     None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_a_clear_4xx(client, digits, role_tokens, case):
    _, path, body, headers, status, code = case
    auth = {"Authorization": f"Bearer {role_tokens['app']}"}
    response = client.post(path, data=body, headers={**auth, **headers},
                           content_type="application/json")
    assert response.status_code == status, response.data[:300]
    payload = orjson.loads(response.data)
    if path.startswith("/v2"):
        assert set(payload) == {"error"} and isinstance(payload["error"], str)
        assert payload["error"]
    else:
        assert set(payload) == {"error"} and payload["error"]["code"] == code
        assert payload["error"]["message"]
    good = client.post(P, data=predict([digits["X"][0].tolist()]), headers=auth,
                       content_type="application/json")
    assert good.status_code == 200

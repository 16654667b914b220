"""Inference through /predict and /v2 with the Flask test client: exact numbers, clear errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.conftest import error_of


@pytest.fixture
def app_headers(role_tokens):
    return {"Authorization": f"Bearer {role_tokens['app']}"}


def _direct(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": X})
    return label, probabilities


@pytest.mark.parametrize("example", ["logreg", "forest", "mlp"])
@pytest.mark.parametrize("batch", [1, 64])
def test_predict_matches_onnxruntime(client, digits, app_headers, example, batch):
    X = digits["X"][:batch]
    version = digits["versions"][example]
    response = client.post("/predict", json={"model": "digits", "inputs": {"input": X.tolist()}},
                           headers={**app_headers, "X-Model-Version": str(version)})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["version"] == version and response.headers["X-Model-Version"] == str(version)
    label, probabilities = _direct(digits["paths"][example], X)
    assert body["outputs"]["label"] == label.tolist()
    np.testing.assert_allclose(np.array(body["outputs"]["probabilities"]), probabilities,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("example", ["logreg", "forest"])
@pytest.mark.parametrize("batch", [1, 64])
def test_v2_json_matches_onnxruntime(client, digits, app_headers, example, batch):
    X = digits["X"][:batch]
    version = digits["versions"][example]
    request = {"id": "abc", "inputs": [{"name": "input", "shape": list(X.shape),
                                        "datatype": "FP32", "data": X.ravel().tolist()}]}
    response = client.post(f"/v2/models/digits/versions/{version}/infer",
                           data=orjson.dumps(request), headers=app_headers)
    assert response.status_code == 200, response.data
    body = orjson.loads(response.data)
    assert body["model_name"] == "digits" and body["model_version"] == str(version)
    assert body["id"] == "abc"
    outputs = {o["name"]: o for o in body["outputs"]}
    label, probabilities = _direct(digits["paths"][example], X)
    assert outputs["label"]["data"] == label.tolist() and outputs["label"]["datatype"] == "INT64"
    assert outputs["probabilities"]["shape"] == [batch, 10]
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(batch, 10),
                               probabilities, rtol=0, atol=1e-6)


def test_unpinned_requests_get_the_newest_live_version(client, digits, app_headers, ops):
    body = {"model": "digits", "inputs": [digits["X"][0].tolist()]}
    assert client.post("/predict", json=body, headers=app_headers).get_json()["version"] == 3
    client.post("/admin/models/digits/versions/3/archive", json={"reason": "t"}, headers=ops)
    client.application.extensions["mgw"].catalog.reload()
    assert client.post("/predict", json=body, headers=app_headers).get_json()["version"] == 2
    pinned = client.post("/predict", json=body, headers={**app_headers, "X-Model-Version": "3"})
    assert pinned.status_code == 404 and "archived" in error_of(pinned)["message"]


def test_alias_pin_and_x_model_header(client, digits, app_headers, ops):
    client.put("/admin/models/digits/aliases/champion", json={"version": 2}, headers=ops)
    response = client.post("/predict", json={"inputs": [digits["X"][0].tolist()]},
                           headers={**app_headers, "X-Model": "digits",
                                    "X-Model-Version": "champion"})
    assert response.status_code == 200 and response.get_json()["version"] == 2


def test_request_ids_are_echoed_or_generated(client, digits, app_headers):
    body = {"model": "digits", "inputs": [digits["X"][0].tolist()]}
    given = client.post("/predict", json=body, headers={**app_headers, "X-Request-Id": "r-1:x"})
    assert given.get_json()["request_id"] == "r-1:x" and given.headers["X-Request-Id"] == "r-1:x"
    made = client.post("/predict", json=body, headers=app_headers)
    rid = made.get_json()["request_id"]
    assert len(rid) == 32 and made.headers["X-Request-Id"] == rid


def test_a_version_registered_now_is_servable_at_once(client, digits, app_headers, ops,
                                                      examples_dir):
    import io

    client.get("/v2/health/ready")  # the catalog has its snapshot before the registration
    data = (examples_dir / "mlp.onnx").read_bytes()
    register = client.post("/admin/models/digits2/versions", headers=ops,
                           data={"file": (io.BytesIO(data), "m.onnx")},
                           content_type="multipart/form-data")
    assert register.status_code == 201
    response = client.post("/predict", json={"model": "digits2",
                                             "inputs": [digits["X"][0].tolist()]},
                           headers=app_headers)
    assert response.status_code == 200 and response.get_json()["version"] == 1


def test_v2_metadata_and_readiness(client, digits, app_headers):
    meta = client.get("/v2/models/digits", headers=app_headers).get_json()
    assert meta == {"name": "digits", "versions": ["1", "2", "3"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                {"name": "probabilities", "datatype": "FP32",
                                 "shape": [-1, 10]}]}
    assert client.get("/v2/models/digits/versions/2", headers=app_headers).get_json()[
        "versions"] == ["2"]
    assert client.get("/v2/models/digits/versions/2/ready", headers=app_headers).status_code \
        == 200
    missing = client.get("/v2/models/nope/ready", headers=app_headers)
    assert missing.status_code == 404 and set(missing.get_json()) == {"error"}
    server = client.get("/v2", headers=app_headers).get_json()
    assert "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").status_code == 200


def test_corrupt_artifact_is_refused_and_others_keep_serving(client, digits, app_headers,
                                                             settings):
    from registry.store import ArtifactStore

    path = ArtifactStore(settings.model_store).path_for(
        __import__("hashlib").sha256(digits["paths"]["forest"].read_bytes()).hexdigest())
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x55
    path.write_bytes(bytes(raw))
    body = {"model": "digits", "inputs": [digits["X"][0].tolist()]}
    broken = client.post("/predict", json=body, headers={**app_headers, "X-Model-Version": "2"})
    assert broken.status_code == 503 and "corrupt" in error_of(broken)["message"]
    fine = client.post("/predict", json=body, headers={**app_headers, "X-Model-Version": "1"})
    assert fine.status_code == 200

"""Every request limit is a setting read from the environment, and each is enforced.

Each test builds the gateway from `GATEWAY_*` variables (as `gateway serve` does), sends
requests just inside and just outside the limit, and checks the answer inside it against
onnxruntime run directly, and the one outside it for the contract's error and for nothing
having been logged. The receive deadline (`GATEWAY_REQUEST_TIMEOUT`) needs a real socket and
is proved in tests/test_limits_served.py; the outcome buffer bound in test_outcome_buffer.py.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings, SettingsError
from gateway.web.app import create_app
from registry import service
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of, server_env
from tests.onnx_factory import slow_digits_model


@pytest.fixture
def sqlite_only(database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("request limits are enforced before the database is involved")


def app_from_env(settings: Settings, **env: str):
    variables = {**server_env(settings), "GATEWAY_AUTH": "on",
                 **{f"GATEWAY_{k.upper()}": v for k, v in env.items()}}
    return create_app(Settings.from_env(variables))


def expected(digits, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(digits["paths"]["logreg"]),
                                   providers=["CPUExecutionProvider"])
    return session.run(["label"], {"input": rows.astype(np.float32)})[0]


def post(client, token, rows, pin: str | None = "1"):
    headers = {**bearer(token), "Content-Type": "application/json"}
    if pin is not None:
        headers["X-Model-Version"] = pin
    return client.post("/predict", data=orjson.dumps({"model": "digits", "inputs": rows}),
                       headers=headers)


def logged(app) -> int:
    outcomes = app.extensions["mgw"].outcomes
    outcomes.flush()
    return outcomes.written


def test_max_batch_setting(settings, digits, role_tokens, sqlite_only):
    app = app_from_env(settings, max_batch="4")
    try:
        client, token = app.test_client(), role_tokens["app"]
        X = digits["X"]
        ok = post(client, token, X[:4].tolist())
        assert ok.status_code == 200
        assert ok.get_json()["outputs"]["label"] == expected(digits, X[:4]).tolist()
        before = logged(app)
        refused = post(client, token, X[:5].tolist())
        assert refused.status_code == 400
        assert "batch of 5 rows; the limit is 4" in error_of(refused)["message"]
        # refused before a version ran: an error row at most, never a prediction
        assert logged(app) - before <= 1
    finally:
        app.extensions["mgw"].close()


def test_max_tensor_elements_setting(settings, digits, role_tokens, sqlite_only):
    app = app_from_env(settings, max_tensor_elements="128")  # two rows of 64
    try:
        client, token = app.test_client(), role_tokens["app"]
        X = digits["X"]
        ok = post(client, token, X[:2].tolist())
        assert ok.status_code == 200
        assert ok.get_json()["outputs"]["label"] == expected(digits, X[:2]).tolist()
        refused = post(client, token, X[:3].tolist())
        assert refused.status_code == 400 and "128" in error_of(refused)["message"]
        v2 = client.post("/v2/models/digits/versions/1/infer", headers=bearer(token),
                         data=orjson.dumps({"inputs": [{
                             "name": "input", "shape": [3, 64], "datatype": "FP32",
                             "data": X[:3].ravel().tolist()}]}))
        assert v2.status_code == 400 and "128" in v2.get_json()["error"]
    finally:
        app.extensions["mgw"].close()


def test_max_body_bytes_setting(settings, digits, role_tokens, sqlite_only):
    app = app_from_env(settings, max_body_bytes="2048")
    try:
        client, token = app.test_client(), role_tokens["app"]
        row = [0.0] * 64  # 64 zeros fit in 2 KiB; 8 rows of digits do not
        assert post(client, token, [row]).status_code == 200
        before = logged(app)
        big = post(client, token, digits["X"][:8].tolist())
        assert big.status_code == 413 and error_of(big)["code"] == "payload_too_large"
        feedback = client.post("/feedback", headers=bearer(token),
                               data=orjson.dumps({"items": [{"request_id": f"r{i}", "label": 1}
                                                            for i in range(100)]}))
        assert feedback.status_code == 413 and error_of(feedback)["code"] == "payload_too_large"
        v2 = client.post("/v2/models/digits/infer", headers=bearer(token),
                         data=b"{" + b" " * 4096 + b"}")
        assert v2.status_code == 413 and set(v2.get_json()) == {"error"}
        assert logged(app) == before  # nothing was served, so nothing was logged
    finally:
        app.extensions["mgw"].close()


def test_shadow_pool_settings_bound_the_queue(settings, digits, db, role_tokens, sqlite_only):
    slow = service.register_version(db, ArtifactStore(settings.model_store), "digits",
                                    slow_digits_model(layers=256), None, "t",
                                    settings.max_model_bytes)
    app = app_from_env(settings, shadow_workers="1", shadow_queue="2")
    try:
        client, token = app.test_client(), role_tokens["app"]
        ops = role_tokens["ops"]
        put = client.put("/admin/models/digits/traffic", headers=bearer(ops), json={
            "weights": {"1": 100}, "shadow": {str(slow["version"]): 100}, "reason": "t"})
        assert put.status_code == 200
        sent = 30
        for row in digits["X"][:sent]:  # routed (not pinned), so each one is shadowed
            response = post(client, token, [row.tolist()], pin=None)
            assert response.status_code == 200
            response.close()  # the shadow copy is handed over once the response is done
        pool = app.extensions["mgw"].shadows
        deadline = time.monotonic() + 60
        while pool.completed + pool.failed < pool.submitted and time.monotonic() < deadline:
            time.sleep(0.05)
        text = client.get("/metrics").get_data(as_text=True)
        dropped = sum(s.value for f in text_string_to_metric_families(text)
                      if f.name == "gateway_shadow_dropped" for s in f.samples
                      if s.name.endswith("_total"))
        # a 1-thread pool with room for 2 cannot keep up with 30 back-to-back copies
        assert pool.submitted + pool.dropped == sent
        assert pool.dropped > 0 and dropped == pool.dropped
        assert pool.completed == pool.submitted and pool.failed == 0
    finally:
        app.extensions["mgw"].close()


@pytest.mark.parametrize("variable, value", [
    ("GATEWAY_REQUEST_TIMEOUT", "0"), ("GATEWAY_REQUEST_TIMEOUT", "soon"),
    ("GATEWAY_MAX_TENSOR_ELEMENTS", "0"), ("GATEWAY_MAX_BATCH", "-1"),
    ("GATEWAY_MAX_BODY_BYTES", "10"), ("GATEWAY_SHADOW_QUEUE", "0"),
])
def test_a_limit_that_cannot_work_is_refused_at_start(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_limits_have_sane_defaults():
    settings = Settings.from_env({})
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.max_batch == 1024
    assert settings.max_tensor_elements == 4_000_000
    assert settings.request_timeout_seconds == 20
    assert settings.shadow_workers >= 1 and 1 <= settings.shadow_queue <= 1024

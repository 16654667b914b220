"""A real gunicorn server: tritonclient.http unchanged, bad input, live registration."""

from __future__ import annotations

import contextlib
import http.client
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton_http

from registry import service
from registry.store import ArtifactStore
from tests.conftest import server_env
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(240)


def _ready_on_both_workers(base, timeout=30.0):
    """Wait as an orchestrator would: ten `/readyz` 200s in a row (fresh connections, so both
    workers), each worker having loaded the versions traffic reaches."""
    import time
    import urllib.error
    import urllib.request

    deadline, streak = time.monotonic() + timeout, 0
    while streak < 10:
        assert time.monotonic() < deadline, "the gateway never became ready"
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                streak = streak + 1 if response.status == 200 else 0
        except urllib.error.HTTPError:
            streak = 0
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(module_stack):
    """One gateway for the tests that only read (the protocol, bad input): the V2 protocol
    does not depend on the registry database, so they run once, on SQLite."""
    with gateway_server(server_env(module_stack["settings"]), workers=2,
                        cwd=module_stack["root"]) as base:
        _ready_on_both_workers(base)
        yield base


@pytest.fixture
def threaded_server(settings, digits, role_tokens, tmp_path):
    """gthread workers keep a connection on one worker, which is how a test reaches each of
    them; the default sync workers close the connection after every response."""
    env = {**server_env(settings), "GATEWAY_WORKER_CLASS": "gthread"}
    with gateway_server(env, workers=2, cwd=tmp_path) as base:
        yield base


def _auth(role_tokens, role="app"):
    return {"Authorization": f"Bearer {role_tokens[role]}"}


def _direct(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["label", "probabilities"], {"input": X})


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_live_ready_metadata_infer(server, module_stack, binary):
    digits, role_tokens = module_stack["digits"], module_stack["role_tokens"]
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    headers = _auth(role_tokens)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata(headers=headers)["extensions"]
    assert client.is_model_ready("digits", headers=headers)
    assert client.is_model_ready("digits", "2", headers=headers)
    meta = client.get_model_metadata("digits", headers=headers)
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"][0]["shape"] == [-1, 64]
    X = digits["X"][:5]
    for version, example in [("", "mlp"), ("1", "logreg"), ("2", "forest")]:
        inp = triton_http.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        outputs = [triton_http.InferRequestedOutput("probabilities", binary_data=binary),
                   triton_http.InferRequestedOutput("label", binary_data=binary)]
        result = client.infer("digits", [inp], model_version=version, outputs=outputs,
                              request_id="req-1", headers=headers)
        response = result.get_response()
        expected_version = version or "3"
        assert response["model_version"] == expected_version and response["id"] == "req-1"
        label, probabilities = _direct(digits["paths"][example], X)
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-6,
                                   rtol=0)


def _post(url, body: bytes, headers) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={**headers,
                                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _post_raw(base: str, body: bytes, headers) -> tuple[int, dict]:
    """Send headers, then as much body as the server takes: a 413 may come before the end."""
    import http.client

    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    conn.putrequest("POST", "/predict")
    for key, value in {**headers, "Content-Type": "application/json",
                       "Content-Length": str(len(body))}.items():
        conn.putheader(key, value)
    conn.endheaders()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.send(body)  # the server may answer early and close; then read what it said
    response = conn.getresponse()
    status, payload = response.status, orjson.loads(response.read())
    conn.close()
    return status, payload


def test_bad_input_does_not_hurt_the_server(server, module_stack):
    digits, role_tokens = module_stack["digits"], module_stack["role_tokens"]
    headers = _auth(role_tokens)
    bad = [b"{", b"[" * 100_000, orjson.dumps({"model": "digits", "inputs": [["x"] * 64]}),
           b'{"model":"digits","inputs":[[' + b"1," * 3_000_000 + b"1]]}"]
    for body in bad:
        status, payload = _post_raw(server, body, headers)
        assert 400 <= status < 500 and payload["error"]["code"] and payload["error"]["message"]
    good = orjson.dumps({"model": "digits", "inputs": [digits["X"][0].tolist()]})
    status, payload = _post(f"{server}/predict", good, headers)
    assert status == 200 and payload["version"] == 3


def _worker_connections(base: str, count: int = 2) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections, one per gunicorn worker (a connection stays on its worker)."""
    found: dict[int, http.client.HTTPConnection] = {}
    extra: list[http.client.HTTPConnection] = []
    try:
        for _ in range(300):  # held open, so the accepting worker has to change eventually
            conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
            conn.request("GET", "/healthz")
            pid = orjson.loads(conn.getresponse().read())["pid"]
            (extra.append(conn) if pid in found else found.__setitem__(pid, conn))
            if len(found) == count:
                return found
            time.sleep(0.01)
    finally:
        for conn in extra:
            conn.close()
    raise AssertionError(f"only reached workers {sorted(found)}")


def _predict_on(conn, body: bytes, headers) -> dict:
    conn.request("POST", "/predict", body=body, headers={**headers,
                                                         "Content-Type": "application/json"})
    response = conn.getresponse()
    payload = orjson.loads(response.read())
    assert response.status == 200, payload
    return payload


def test_new_version_reaches_both_workers_within_a_second(threaded_server, settings, digits, db,
                                                          role_tokens, examples_dir):
    headers = _auth(role_tokens)
    body = orjson.dumps({"model": "digits", "inputs": [digits["X"][0].tolist()]})
    workers = _worker_connections(threaded_server)
    for conn in workers.values():  # both workers serve the current newest version (3)
        assert _predict_on(conn, body, headers)["version"] == 3
    new = service.register_version(
        db, ArtifactStore(settings.model_store), "digits",
        _retrained_mlp(examples_dir), None, "tests", settings.max_model_bytes)
    registered_at = time.monotonic()
    seen: dict[int, float] = {}
    while time.monotonic() - registered_at < 5 and len(seen) < len(workers):
        for pid, conn in workers.items():
            if pid not in seen and _predict_on(conn, body, headers)["version"] == new["version"]:
                seen[pid] = time.monotonic() - registered_at
    print(f"new version served by each worker after (s): {seen}")
    assert len(seen) == 2, seen  # both workers, without a restart
    assert max(seen.values()) < 1.0, seen


def _retrained_mlp(examples_dir) -> bytes:
    """The mlp file with one more metadata entry: different bytes, same behaviour."""
    import onnx

    model = onnx.load(str(examples_dir / "mlp.onnx"))
    entry = model.metadata_props.add()
    entry.key, entry.value = "retrained", "yes"
    return model.SerializeToString()


def test_revoked_token_is_refused_by_every_worker_within_a_second(threaded_server, db,
                                                                  role_tokens):
    from registry import tokens

    headers = {"Authorization": f"Bearer {role_tokens['ops']}"}
    workers = _worker_connections(threaded_server)
    for conn in workers.values():
        conn.request("GET", "/admin/models", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    tokens.revoke_token(db, "test-ops", "tests")
    revoked_at = time.monotonic()
    refused: dict[int, float] = {}
    while len(refused) < len(workers) and time.monotonic() - revoked_at < 5:
        for pid, conn in workers.items():
            if pid in refused:
                continue
            conn.request("GET", "/admin/models", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 401:
                refused[pid] = time.monotonic() - revoked_at
        time.sleep(0.02)
    print(f"revoked token refused by each worker after (s): {refused}")
    assert len(refused) == 2 and max(refused.values()) < 1.0, refused

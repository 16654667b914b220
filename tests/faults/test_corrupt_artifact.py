"""An artifact corrupted on disk after registration: refused at load, counted, alerted, named by
`/readyz`, while the other versions keep serving; uploading the same bytes repairs it.

The corruption is real (bytes flipped in the stored file under the model store), the gateway is
a real `gateway serve` (gunicorn, two workers) or an in-process app, and the registry is SQLite:
what is under test is the store's sha256 check and the runtime's handling of its refusal, which
do not depend on the database kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings
from gateway.web.app import create_app
from registry.migrate import upgrade
from registry.store import ArtifactCorrupt, ArtifactStore
from tests.conftest import bearer, error_of, server_env
from tests.server import gateway_server

SHA256_REFUSAL = "failed its sha256 check"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only (this module replaces the conftest's sqlite/postgresql parametrisation)."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    yield url


def corrupt(store_root: Path, data: bytes) -> str:
    """Flip bytes in the middle of the stored copy of `data`; returns its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    path = ArtifactStore(store_root).path_for(digest)
    path.chmod(0o644)  # the store writes artifacts read-only
    raw = bytearray(path.read_bytes())
    for offset in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[offset] ^= 0xA5
    path.write_bytes(bytes(raw))
    return digest


def call(method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request to the served gateway; (status, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def load_failures(metrics_text: str) -> dict[tuple[str, str], float]:
    """`gateway_model_load_failures_total` samples by (model, version)."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "gateway_model_load_failures_total":
                found[(sample.labels["model"], sample.labels["version"])] = sample.value
    return found


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s; last: {last}")


def test_served_gateway_refuses_a_corrupted_routed_version_and_says_why(
        settings: Settings, digits: dict[str, Any], role_tokens: dict[str, str],
        client: FlaskClient, tmp_path: Path) -> None:
    ops, app_token = bearer(role_tokens["ops"]), bearer(role_tokens["app"])
    # route everything to version 2 while its file is intact (a policy naming a version that
    # fails to load is refused), then corrupt it, then start the gateway: a fresh worker must
    # load it from disk and find the damage
    routed = client.put("/admin/models/digits/traffic", headers=ops,
                        json={"weights": {"2": 100}, "reason": "route to the forest"})
    assert routed.status_code == 200, routed.get_json()
    digest = corrupt(settings.model_store, digits["paths"]["forest"].read_bytes())
    row = digits["X"][0].tolist()
    body = {"model": "digits", "inputs": [row]}

    with gateway_server(server_env(settings), cwd=tmp_path) as base:
        def broken_ready() -> tuple[bool, Any]:
            status, answer = call("GET", f"{base}/readyz")
            state = answer["checks"]["versions"].get("digits:2", "")
            return status == 503 and state.startswith("broken:"), (status, answer)

        # every worker warms the routed version at start; ask several times so both answer
        for _ in range(6):
            status, ready = wait_until(broken_ready, 30, "/readyz naming the broken version")
            assert ready["ready"] is False
            assert ready["checks"]["registry"] == "ok" and ready["checks"]["redis"] == "ok"
            assert set(ready["checks"]["versions"]) == {"digits:2"}
            assert digest in ready["checks"]["versions"]["digits:2"]
            assert SHA256_REFUSAL in ready["checks"]["versions"]["digits:2"]

        for headers in ({}, {"X-Model-Version": "2"}):  # routed by the policy, and pinned
            status, answer = call("POST", f"{base}/predict", body, {**app_token, **headers})
            assert status == 503, answer
            assert answer["error"]["code"] == "unavailable"
            message = answer["error"]["message"]
            assert message.startswith("digits version 2 cannot be loaded: ")
            assert SHA256_REFUSAL in message and digest in message
        status, answer = call("POST", f"{base}/v2/models/digits/versions/2/infer",
                              {"inputs": [{"name": "input", "shape": [1, 64],
                                           "datatype": "FP32", "data": row}]}, app_token)
        assert status == 503 and SHA256_REFUSAL in answer["error"], answer

        for version in (1, 3):  # the intact versions keep serving, on every worker
            for _ in range(4):
                status, answer = call("POST", f"{base}/predict", body,
                                      {**app_token, "X-Model-Version": str(version)})
                assert status == 200 and answer["version"] == version, answer

        status, text = call("GET", f"{base}/metrics")
        assert status == 200
        failures = load_failures(text)
        assert failures.get(("digits", "2"), 0) >= 1, failures
        assert ("digits", "1") not in failures and ("digits", "3") not in failures, failures

        # routed away from the broken version, the gateway is ready again
        status, answer = call("PUT", f"{base}/admin/models/digits/traffic",
                              {"weights": {"1": 100}, "reason": "away from the corrupt file"}, ops)
        assert status == 200, answer

        def ready_again() -> tuple[bool, Any]:
            status, answer = call("GET", f"{base}/readyz")
            return status == 200, (status, answer)

        for _ in range(4):
            status, ready = wait_until(ready_again, 10, "/readyz ready on version 1")
            assert ready["checks"]["versions"] == {"digits:1": "ok"}


def test_corrupted_version_is_refused_in_process_and_the_same_upload_repairs_it(
        settings: Settings, digits: dict[str, Any], role_tokens: dict[str, str],
        client: FlaskClient) -> None:
    ops, app_token = bearer(role_tokens["ops"]), bearer(role_tokens["app"])
    forest = digits["paths"]["forest"].read_bytes()
    digest = corrupt(settings.model_store, forest)
    store = ArtifactStore(settings.model_store)
    with pytest.raises(ArtifactCorrupt, match=SHA256_REFUSAL):
        store.read(digest)
    body = {"model": "digits", "inputs": [digits["X"][0].tolist()]}

    for _ in range(2):
        refused = client.post("/predict", json=body,
                              headers={**app_token, "X-Model-Version": "2"})
        assert refused.status_code == 503
        error = error_of(refused)
        assert error["code"] == "unavailable"
        assert error["message"].startswith("digits version 2 cannot be loaded: ")
        assert SHA256_REFUSAL in error["message"] and digest in error["message"]
    # one load attempt, then the runtime remembers the failure (the second request did not
    # re-read the 3 MB file)
    assert load_failures(client.get("/metrics").get_data(as_text=True)) == {("digits", "2"): 1}
    assert client.post("/predict", json=body,
                       headers={**app_token, "X-Model-Version": "1"}).status_code == 200

    # a policy that would route to it is refused and changes nothing
    before = client.get("/admin/models/digits/traffic", headers=ops).get_json()
    policy = client.put("/admin/models/digits/traffic", headers=ops,
                        json={"weights": {"1": 50, "2": 50}, "reason": "try the forest"})
    assert policy.status_code == 400
    assert SHA256_REFUSAL in error_of(policy)["message"]
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json() == before

    # uploading the same bytes again: still 409 (the version exists), but the store rewrites
    # the corrupt file with the uploaded bytes, which hash to its name (this used to be a 500)
    again = client.post("/admin/models/digits/versions", headers=ops,
                        data={"file": (digits["paths"]["forest"].open("rb"), "forest.onnx")},
                        content_type="multipart/form-data")
    assert again.status_code == 409 and "version 2" in error_of(again)["message"], again.get_json()
    assert store.read(digest) == forest
    versions = client.get("/admin/models", headers=ops).get_json()["models"][0]["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3]

    # a worker started now (a fresh app) loads the repaired file and serves the version
    fresh = create_app(settings)
    try:
        served = fresh.test_client().post("/predict", json=body,
                                          headers={**app_token, "X-Model-Version": "2"})
        assert served.status_code == 200 and served.get_json()["version"] == 2
    finally:
        fresh.extensions["mgw"].close()


def test_multi_megabyte_uploads_parse_and_the_metadata_limit_still_holds(
        settings: Settings, client: FlaskClient, role_tokens: dict[str, str],
        examples_dir: Path) -> None:
    """The repair above uploads a 3 MB file. werkzeug 3.1 applied the 64 KiB metadata limit to
    its multipart buffer, file bytes included, so such uploads were refused with 413; the
    metadata part is now limited on its own."""
    ops = bearer(role_tokens["ops"])
    forest = (examples_dir / "forest.onnx").read_bytes()
    assert len(forest) > 2_000_000
    created = client.post("/admin/models/big/versions", headers=ops,
                          data={"file": (io.BytesIO(forest), "forest.onnx"),
                                "metadata": '{"description": "3 MB"}'},
                          content_type="multipart/form-data")
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["size_bytes"] == len(forest)

    huge = json.dumps({"description": "x" * (64 * 1024)})
    refused = client.post("/admin/models/big/versions", headers=ops,
                          data={"file": (io.BytesIO(forest), "forest.onnx"), "metadata": huge},
                          content_type="multipart/form-data")
    assert refused.status_code == 413
    error = error_of(refused)
    assert error["code"] == "payload_too_large" and "metadata is" in error["message"]
    models = client.get("/admin/models", headers=ops).get_json()["models"]
    assert [(m["model"], [v["version"] for v in m["versions"]]) for m in models] == [("big", [1])]

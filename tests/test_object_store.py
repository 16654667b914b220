"""Artifacts in a real S3-compatible server (SeaweedFS) and encrypted at rest, in-process.

The multi-process guarantees (two `gateway serve` on one bucket, object storage stopped under
load) are in test_object_store_served.py; here: what lands in the bucket and on disk, the
cache, the keys, rotation and migration, and the errors a caller sees.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from flask import Flask

from gateway.services import store_for
from gateway.settings import Settings
from gateway.web.app import create_app
from registry import tokens
from registry.migrate import upgrade
from registry.sealing import MAGIC, key_id
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of
from tests.onnx_factory import add_constant_model

ONNX_PREFIX = b"\x08"  # a ModelProto starts with its ir_version field (tag 1, varint)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The store is what these tests are about: one SQLite registry is enough."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    return url


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@contextlib.contextmanager
def gateway(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    try:
        yield app
    finally:
        app.extensions["mgw"].close()


def upload(app: Flask, ops: dict[str, str], data: bytes, name: str = "m") -> tuple[int, dict]:
    response = app.test_client().post(
        f"/admin/models/{name}/versions", data={"file": (io.BytesIO(data), "model.onnx")},
        headers=ops, content_type="multipart/form-data")
    return response.status_code, response.get_json()


def predict(app: Flask, token: dict[str, str], rows: list, name: str = "m",
            version: int | None = None):
    headers = dict(token)
    if version is not None:
        headers["X-Model-Version"] = str(version)
    return app.test_client().post("/predict", json={"model": name, "inputs": {"x": rows}},
                                  headers=headers)


def direct(data: bytes, rows: list) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(rows, dtype=np.float32)})[0]


@pytest.fixture
def headers(db) -> dict[str, dict[str, str]]:
    return {role: bearer(tokens.create_token(db, role, f"t-{role}", "tests"))
            for role in ("ops", "app")}


ROWS = [[0.5, 1.0, -2.0, 3.25], [1.0, 2.0, 3.0, 4.0]]


def served_equals_direct(app: Flask, headers, data: bytes, version: int) -> None:
    response = predict(app, headers["app"], ROWS, version=version)
    assert response.status_code == 200, response.get_json()
    np.testing.assert_allclose(np.asarray(response.get_json()["outputs"]["y"], np.float32),
                               direct(data, ROWS), rtol=0, atol=0)


def bucket_objects(seaweed, settings: Settings) -> dict[str, bytes]:
    bucket = str(settings.model_store).removeprefix("s3://").split("/", 1)[0]
    return seaweed.objects(bucket)


def cache_files(settings: Settings) -> dict[str, bytes]:
    root = Path(settings.model_cache)
    return {p.name: p.read_bytes() for p in root.glob("sha256/*/*.onnx")}


# -- object storage -------------------------------------------------------------------------

def test_registered_artifact_lands_in_the_bucket_once_and_serves_from_another_cache(
        s3_settings, headers, seaweed, tmp_path):
    data = add_constant_model(1.5)
    sha = hashlib.sha256(data).hexdigest()
    with gateway(s3_settings) as one:
        status, body = upload(one, headers["ops"], data)
        assert status == 201, body
        assert body["sha256"] == sha
        objects = bucket_objects(seaweed, s3_settings)
        assert objects == {f"models/sha256/{sha[:2]}/{sha}.onnx": data}
        served_equals_direct(one, headers, data, 1)
        assert cache_files(s3_settings) == {f"{sha}.onnx": data}
        client = seaweed.client()
        bucket = str(s3_settings.model_store)[5:].split("/")[0]
        before = client.head_object(Bucket=bucket, Key=f"models/sha256/{sha[:2]}/{sha}.onnx")
        # the same bytes under another name: the object is not written again
        status, again = upload(one, headers["ops"], data, name="other")
        assert status == 201 and again["sha256"] == sha
        after = client.head_object(Bucket=bucket, Key=f"models/sha256/{sha[:2]}/{sha}.onnx")
        assert after["LastModified"] == before["LastModified"]
    # a replica with its own, empty cache serves it too (after one download)
    other = s3_settings.with_(model_cache=tmp_path / "cache-two")
    with gateway(other) as two:
        served_equals_direct(two, headers, data, 1)
    assert cache_files(other) == {f"{sha}.onnx": data}


def test_a_warm_cache_serves_with_object_storage_unreachable(s3_settings, headers, monkeypatch,
                                                             tmp_path):
    data = add_constant_model(2.5)
    with gateway(s3_settings) as one:
        assert upload(one, headers["ops"], data)[0] == 201
        served_equals_direct(one, headers, data, 1)
    # a restart whose endpoint answers nothing: the cached copy is all it has
    from tests.server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with gateway(s3_settings) as again:
        served_equals_direct(again, headers, data, 1)
        ready = again.test_client().get("/readyz").get_json()
        assert ready["ready"] is True, ready
        assert ready["checks"]["artifact_store"].startswith("unreachable"), ready
        # registering answers 503, names the store, and records nothing
        status, body = upload(again, headers["ops"], add_constant_model(3.5), name="new")
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert "object storage" in body["error"]["message"]
        assert s3_settings.model_store.split("/")[2] in body["error"]["message"]
        listed = again.test_client().get("/admin/models", headers=headers["ops"]).get_json()
        assert [m["model"] for m in listed["models"]] == ["m"]


def test_the_cache_is_bounded_least_recently_used_first(s3_settings, headers):
    models = [add_constant_model(float(i), width=4096) for i in range(4)]
    size = len(models[0])
    bounded = s3_settings.with_(model_cache_bytes=int(2.5 * size), session_cache_count=1)
    with gateway(bounded) as app:
        for data in models:
            assert upload(app, headers["ops"], data)[0] == 201
        for version in (1, 2, 3, 1, 4):
            response = app.test_client().post(
                "/predict", json={"model": "m", "inputs": {"x": [[0.0] * 4096]}},
                headers={**headers["app"], "X-Model-Version": str(version)})
            assert response.status_code == 200, response.get_json()
        kept = set(cache_files(bounded))
        total = sum(len(b) for b in cache_files(bounded).values())
    assert total <= 2.5 * size
    shas = [hashlib.sha256(m).hexdigest() for m in models]
    assert kept == {f"{shas[0]}.onnx", f"{shas[3]}.onnx"}  # 2 and 3 were least recently used


def test_a_damaged_cache_file_is_fetched_again_not_served(s3_settings, headers):
    data = add_constant_model(4.0)
    sha = hashlib.sha256(data).hexdigest()
    with gateway(s3_settings) as app:
        assert upload(app, headers["ops"], data)[0] == 201
    cached = Path(s3_settings.model_cache) / "sha256" / sha[:2] / f"{sha}.onnx"
    damaged = add_constant_model(99.0)  # a valid model, the wrong one
    cached.chmod(0o644)
    cached.write_bytes(damaged)
    with gateway(s3_settings) as app:
        served_equals_direct(app, headers, data, 1)
    assert cached.read_bytes() == data


# -- encryption at rest ---------------------------------------------------------------------

def assert_not_the_model(stored: bytes, data: bytes) -> None:
    assert stored.startswith(MAGIC) and not stored.startswith(ONNX_PREFIX)
    assert hashlib.sha256(stored).hexdigest() != hashlib.sha256(data).hexdigest()
    assert b"add_constant" not in stored and data[-64:] not in stored


@pytest.mark.parametrize("where", ["local", "s3"])
def test_with_a_key_nothing_stored_is_the_model_and_serving_is_unchanged(
        where, request, settings, headers, seaweed):
    key = new_key()
    base = request.getfixturevalue("s3_settings") if where == "s3" else settings
    sealed = base.with_(artifact_key=key)
    data = add_constant_model(5.0)
    sha = hashlib.sha256(data).hexdigest()
    with gateway(sealed) as app:
        status, body = upload(app, headers["ops"], data)
        assert status == 201 and body["sha256"] == sha  # the identity stays the plaintext's
        served_equals_direct(app, headers, data, 1)
    if where == "s3":
        (stored,) = bucket_objects(seaweed, sealed).values()
        assert_not_the_model(stored, data)
        (cached,) = cache_files(sealed).values()  # encrypted on the replica's disk too
        assert_not_the_model(cached, data)
    else:
        stored = ArtifactStore(sealed.model_store).path_for(sha).read_bytes()
        assert_not_the_model(stored, data)
    # a wrong key, and no key: a clear error naming the key id, never a wrong model
    for variant in (sealed.with_(artifact_key=new_key()), sealed.with_(artifact_key=None)):
        if where == "s3":
            for path in Path(sealed.model_cache).glob("sha256/*/*.onnx"):
                path.unlink()
        with gateway(variant) as app:
            response = predict(app, headers["app"], ROWS)
            assert response.status_code == 503, response.get_json()
            message = error_of(response)["message"]
            assert key_id(base64.b64decode(key)) in message and "GATEWAY_ARTIFACT_KEY" in message


def test_plaintext_cache_is_a_setting(s3_settings, headers):
    settings = s3_settings.with_(artifact_key=new_key(), model_cache_plaintext=True)
    data = add_constant_model(6.0)
    with gateway(settings) as app:
        assert upload(app, headers["ops"], data)[0] == 201
        served_equals_direct(app, headers, data, 1)
    assert list(cache_files(settings).values()) == [data]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_rotate_key_interrupted_and_rerun_keeps_every_version_servable(
        where, request, settings, headers, cli, capsys, monkeypatch):
    old, new = new_key(), new_key()
    base = request.getfixturevalue("s3_settings") if where == "s3" else settings
    models = [add_constant_model(float(i) + 0.25) for i in range(3)]
    with gateway(base.with_(artifact_key=old)) as app:
        for data in models:
            assert upload(app, headers["ops"], data)[0] == 201
    monkeypatch.setenv("GATEWAY_MODEL_STORE", str(base.model_store))
    monkeypatch.setenv("GATEWAY_MODEL_CACHE", str(base.model_cache))
    monkeypatch.setenv("GATEWAY_ARTIFACT_KEY", new)
    monkeypatch.setenv("GATEWAY_ARTIFACT_OLD_KEYS", old)
    status, out, err = cli(capsys, "store", "rotate-key", "--limit", "1")
    assert status == 0, err
    assert "1 re-encrypted" in out and "stopped at --limit" in out
    status, out, _ = cli(capsys, "store", "status", "--json")
    census = orjson.loads(out)["artifacts_by_key"]
    new_id, old_id = key_id(base64.b64decode(new)), key_id(base64.b64decode(old))
    assert census == {new_id: 1, old_id: 2}
    # halfway: a replica knowing both keys serves every version
    both = base.with_(artifact_key=new, artifact_old_keys=old)
    with gateway(both) as app:
        for version, data in enumerate(models, start=1):
            served_equals_direct(app, headers, data, version)
    status, out, err = cli(capsys, "store", "rotate-key")
    assert status == 0, err
    assert "2 re-encrypted, 1 already done, 0 failed" in out
    status, out, _ = cli(capsys, "store", "status", "--json")
    assert orjson.loads(out)["artifacts_by_key"] == {new_id: 3}
    # done: the old key can go
    with gateway(base.with_(artifact_key=new, model_cache=Path(str(base.model_cache)) / "x")
                 ) as app:
        for version, data in enumerate(models, start=1):
            served_equals_direct(app, headers, data, version)


def test_rotate_key_without_a_new_key_is_refused(settings, cli, capsys):
    status, _, err = cli(capsys, "store", "rotate-key")
    assert status == 2 and "GATEWAY_ARTIFACT_KEY is not set" in err


def test_migrate_a_local_store_into_a_bucket_resumably(settings, s3_settings, headers, cli,
                                                       capsys, seaweed, monkeypatch):
    models = [add_constant_model(float(i) + 0.75) for i in range(3)]
    with gateway(settings) as app:
        for data in models:
            assert upload(app, headers["ops"], data)[0] == 201
    monkeypatch.setenv("GATEWAY_MODEL_CACHE", str(s3_settings.model_cache))
    target = str(s3_settings.model_store)
    status, out, err = cli(capsys, "store", "migrate", "--to", target, "--limit", "2")
    assert status == 0, err
    assert "2 copied, 0 already done" in out and len(bucket_objects(seaweed, s3_settings)) == 2
    status, out, err = cli(capsys, "store", "migrate", "--to", target)
    assert status == 0, err
    assert "1 copied, 2 already done, 0 failed" in out
    assert sorted(bucket_objects(seaweed, s3_settings).values()) == sorted(models)
    with gateway(s3_settings.with_(model_cache=Path(str(s3_settings.model_cache)) / "fresh")
                 ) as app:
        for version, data in enumerate(models, start=1):
            served_equals_direct(app, headers, data, version)


def test_a_malformed_key_stops_start_up_with_a_clear_message(settings, cli, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("GATEWAY_ARTIFACT_KEY", base64.b64encode(b"short").decode())
    status, _, err = cli(capsys, "store", "status")
    assert status == 2 and "GATEWAY_ARTIFACT_KEY must be 32 bytes" in err
    with pytest.raises(Exception, match="not base64"):
        store_for(settings.with_(artifact_key="not base64!"))

"""Two `gateway serve` replicas on one bucket (real SeaweedFS), one PostgreSQL, one Redis, each
with its own cache directory: what one registers the other serves at once, and object storage
stopped for 30 s under load costs no request."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.conftest import server_env
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(300)

OUTAGE_S = 30.0


@pytest.fixture
def postgres_only(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas on object storage run once, on PostgreSQL (production's registry)")


def register(base: str, token: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{base}/admin/models/{name}/versions",
                         files={"file": ("model.onnx", data)},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)


def predict(base: str, token: str, name: str, rows: np.ndarray, version: int | None = None
            ) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers["X-Model-Version"] = str(version)
    return requests.post(f"{base}/predict", json={"model": name, "inputs": rows.tolist()},
                         headers=headers, timeout=10)


def direct_labels(path: Path, rows: np.ndarray) -> list[int]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: rows.astype(np.float32)}
    return session.run(None, feed)[0].tolist()


def versions_of(base: str, token: str, name: str) -> list[int]:
    response = requests.get(f"{base}/admin/models", headers={"Authorization": f"Bearer {token}"},
                            timeout=10)
    for model in response.json()["models"]:
        if model["model"] == name:
            return [v["version"] for v in model["versions"]]
    return []


def test_replicas_share_a_bucket_and_survive_its_outage(s3_settings, seaweed, role_tokens,
                                                       examples_dir, tmp_path, postgres_only):
    ops, app = role_tokens["ops"], role_tokens["app"]
    rows = np.load(examples_dir / "digits_test.npz")["X"][:8]
    logreg, forest, mlp = (examples_dir / f"{n}.onnx" for n in ("logreg", "forest", "mlp"))
    env = {**server_env(s3_settings), **seaweed.env()}
    bucket = str(s3_settings.model_store)[5:].split("/")[0]
    with gateway_server({**env, "GATEWAY_MODEL_CACHE": str(tmp_path / "cache-one")},
                        workers=1, cwd=tmp_path) as one, \
            gateway_server({**env, "GATEWAY_MODEL_CACHE": str(tmp_path / "cache-two")},
                           workers=1, cwd=tmp_path) as two:
        # registered through one, served by two at once, equal to onnxruntime on the file
        response = register(one, ops, "digits", logreg.read_bytes())
        assert response.status_code == 201, response.text
        served = predict(two, app, "digits", rows)
        assert served.status_code == 200, served.text
        assert served.json()["outputs"]["label"] == direct_labels(logreg, rows)
        sha = hashlib.sha256(logreg.read_bytes()).hexdigest()
        assert (tmp_path / "cache-two" / "sha256" / sha[:2] / f"{sha}.onnx").exists()
        assert predict(one, app, "digits", rows).json()["outputs"]["label"] == \
            direct_labels(logreg, rows)
        objects_before = set(seaweed.objects(bucket))

        # object storage away for 30 s under load
        failures: list[str] = []
        counts = {"ok": 0}
        stop = threading.Event()

        def load(base: str) -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    r = session.post(f"{base}/predict",
                                     json={"model": "digits", "inputs": rows[:2].tolist()},
                                     headers={"Authorization": f"Bearer {app}"}, timeout=10)
                    if r.status_code != 200:
                        failures.append(f"{base}: {r.status_code} {r.text[:200]}")
                    else:
                        counts["ok"] += 1
                except requests.RequestException as exc:
                    failures.append(f"{base}: {exc}")
                time.sleep(0.01)

        threads = [threading.Thread(target=load, args=(base,)) for base in (one, two)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1)
            seaweed.stop()
            down_at = time.monotonic()
            refused = register(two, ops, "digits", forest.read_bytes())
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            assert "object storage" in refused.json()["error"]["message"]
            assert versions_of(one, ops, "digits") == [1]  # nothing recorded
            ready = requests.get(f"{two}/readyz", timeout=10).json()
            assert ready["ready"] is True, ready
            assert ready["checks"]["artifact_store"].startswith("unreachable"), ready
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            seaweed.start()
            time.sleep(1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        assert failures == [], failures[:5]
        assert counts["ok"] > 100
        assert set(seaweed.objects(bucket)) == objects_before  # the refused one left nothing

        # back: registration works again, and the other replica serves it
        response = register(two, ops, "digits", mlp.read_bytes())
        assert response.status_code == 201, response.text
        assert response.json()["version"] == 2
        served = predict(one, app, "digits", rows, version=2)
        assert served.status_code == 200, served.text
        assert served.json()["outputs"]["label"] == direct_labels(mlp, rows)

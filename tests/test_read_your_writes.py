"""Every write is visible at once to the next request on any worker of any gateway.

Two real `gateway serve` processes (two sync workers each) share one database and one Redis.
Each round registers a new model, then immediately gives it traffic, moves an alias, registers
a second version, pins it, reads its record and diffs nothing: each call on the other gateway
than the one before it, on a fresh connection (so on whichever worker accepts it). A worker
that answered from a snapshot older than the write would say `404 unknown_model` or
`unknown_version`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import requests

from tests.conftest import server_env
from tests.onnx_factory import add_constant_model
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(300)

ROUNDS = 25  # 225 calls on fresh connections across 2 gateways x 2 workers


def _call(base: str, method: str, path: str, token: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    # no Session: every call opens its own connection, so any worker of `base` may take it
    return requests.request(method, f"{base}{path}", headers=headers, timeout=15, **kwargs)


def test_writes_are_visible_to_the_next_call_on_any_worker_of_any_gateway(
        settings, role_tokens, tmp_path):
    ops, app = role_tokens["ops"], role_tokens["app"]
    env = server_env(settings)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    failures: list[str] = []
    calls = 0
    with gateway_server(env, cwd=tmp_path) as one, gateway_server(env, cwd=tmp_path) as two:
        gateways = [one, two]

        def call(method: str, path: str, token: str, expect: int, **kwargs) -> requests.Response:
            nonlocal calls
            base = gateways[calls % 2]
            calls += 1
            response = _call(base, method, path, token, **kwargs)
            if response.status_code != expect:
                failures.append(f"{method} {path} on {base}: {response.status_code} "
                                f"{response.text[:200]}")
            return response

        for index in range(ROUNDS):
            name = f"rw-{index}"
            first = add_constant_model(float(index))
            second = add_constant_model(float(index) + 0.5)
            call("POST", f"/admin/models/{name}/versions", ops, 201,
                 files={"file": ("m.onnx", first)})
            call("PUT", f"/admin/models/{name}/traffic", ops, 200,
                 json={"weights": {"1": 100}, "reason": "first"})
            call("PUT", f"/admin/models/{name}/aliases/champion", ops, 200, json={"version": 1})
            call("POST", f"/admin/models/{name}/versions", ops, 201,
                 files={"file": ("m.onnx", second)},
                 data={"metadata": orjson.dumps({"parent_version": 1}).decode()})
            pinned = call("POST", "/predict", app, 200,
                          json={"model": name, "inputs": x.tolist()},
                          headers={"X-Model-Version": "2"})
            if pinned.status_code == 200:
                got = np.array(pinned.json()["outputs"]["y"], dtype=np.float32)
                want = ort.InferenceSession(second).run(None, {"x": x})[0]
                np.testing.assert_allclose(got, want, rtol=1e-6)
            record = call("GET", f"/admin/models/{name}/versions/2", ops, 200)
            if record.status_code == 200:
                assert record.json()["parent_version"] == 1
            call("PUT", f"/admin/models/{name}/traffic", ops, 200,
                 json={"weights": {"1": 90, "2": 10}, "reason": "canary"})
            call("PUT", f"/admin/models/{name}/aliases/champion", ops, 200, json={"version": 2})
            routed = call("POST", "/predict", app, 200,
                          json={"model": name, "inputs": x.tolist()},
                          headers={"X-Model-Version": "champion"})
            if routed.status_code == 200 and routed.headers["X-Model-Version"] != "2":
                failures.append(f"{name}: the moved alias still served version "
                                f"{routed.headers['X-Model-Version']}")
    print(f"read-your-writes: {calls} calls over {ROUNDS} rounds, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {calls} calls failed:\n" + "\n".join(failures[:20])


def test_a_miss_looks_the_model_up_but_unknown_names_cannot_hammer_the_database(
        settings, db, tmp_path):
    """The data plane's snapshot misses a model registered after it was read: one lookup finds
    it. A flood of names that do not exist costs at most the per-worker budget of lookups."""
    import time

    from sqlalchemy import event

    from gateway.serving.catalog import MISS_LOOKUPS_PER_SECOND, Catalog
    from registry import service
    from registry.db import Database
    from registry.errors import UnknownModel, UnknownVersion
    from registry.store import ArtifactStore

    store = ArtifactStore(settings.model_store)
    service.register_version(db, store, "early", add_constant_model(1.0), None, "t", 1 << 20)
    catalog_db = Database(settings.database_url)  # the worker's own engine: its queries only
    catalog = Catalog(catalog_db, poll_seconds=3600)  # no poll during the test: misses only
    assert set(catalog.snapshot.models) == {"early"}
    lookups = []

    @event.listens_for(catalog_db.engine, "before_cursor_execute")
    def count(conn, cursor, statement, *args):
        if "FROM models" in statement and "models.name =" in statement:
            lookups.append(statement)

    service.register_version(db, store, "late", add_constant_model(2.0), None, "t", 1 << 20)
    assert catalog.model("late").versions[1].sha256 == service.get_version(db, "late", 1)[
        "sha256"]
    assert len(lookups) == 1, lookups
    assert catalog.model("late") and len(lookups) == 1  # now in the snapshot
    service.register_version(db, store, "late", add_constant_model(3.0), None, "t", 1 << 20)
    service.set_alias(db, "late", "fresh", 2, "t", None)
    assert catalog.version("late", "fresh")[0].version == 2  # a missing alias: looked up
    with pytest.raises(UnknownVersion):
        catalog.version("late", 9)
    time.sleep(1.0)  # the budget refills
    lookups.clear()
    started = time.monotonic()
    for index in range(500):
        with pytest.raises(UnknownModel):
            catalog.model(f"nobody-{index}")
    elapsed = time.monotonic() - started
    allowed = MISS_LOOKUPS_PER_SECOND * (1 + elapsed) + 1
    print(f"500 unknown names in {elapsed:.3f} s: {len(lookups)} database lookups")
    assert len(lookups) <= allowed
    time.sleep(2 / MISS_LOOKUPS_PER_SECOND)
    service.register_version(db, store, "after", add_constant_model(4.0), None, "t", 1 << 20)
    assert catalog.model("after").name == "after"  # the budget came back
    event.remove(catalog_db.engine, "before_cursor_execute", count)
    catalog.stop()
    catalog_db.dispose()

"""Traffic policies with a real Redis: splits, sticky keys, pins, validation, rollback."""

from __future__ import annotations

import collections
import time

import pytest
from scipy.stats import chisquare

from gateway.traffic.policy import TrafficPolicy, choose_version
from tests.conftest import error_of


@pytest.fixture
def app_headers(role_tokens):
    return {"Authorization": f"Bearer {role_tokens['app']}"}


@pytest.fixture
def row(digits):
    return digits["X"][0].tolist()


def put_policy(client, ops, body, **headers):
    return client.put("/admin/models/digits/traffic", json=body, headers={**ops, **headers})


def served(client, headers, row, n=1, **extra):
    versions = []
    for _ in range(n):
        # closing the response is what a server does once it is sent; shadows start then
        with client.post("/predict", json={"model": "digits", "inputs": [row]},
                         headers={**headers, **extra}) as response:
            assert response.status_code == 200, response.get_json()
            versions.append(response.get_json()["version"])
    return versions


def test_eighty_twenty_split_passes_a_chi_square_test(client, ops, app_headers, row):
    assert put_policy(client, ops, {"weights": {"1": 80, "2": 20}, "reason": "ab"}
                      ).status_code == 200
    counts = collections.Counter(served(client, app_headers, row, n=2000))
    assert set(counts) == {1, 2}
    result = chisquare([counts[1], counts[2]], [1600, 400])
    assert result.pvalue > 0.001, (counts, result)


def test_same_routing_key_gets_the_same_version(client, ops, app_headers, row):
    put_policy(client, ops, {"weights": {"1": 50, "2": 30, "3": 20}})
    for key in ("alice", "bob", "carol"):
        versions = served(client, app_headers, row, n=100, **{"X-Routing-Key": key})
        assert len(set(versions)) == 1, (key, collections.Counter(versions))


def test_moving_weights_moves_few_keys(client, ops, app_headers, row):
    """50/50 -> 60/40 must move only the keys 2 gives up: 10% expected, 15% allowed."""
    put_policy(client, ops, {"weights": {"1": 50, "2": 50}})
    keys = [f"user-{i}" for i in range(300)]
    before = {k: served(client, app_headers, row, **{"X-Routing-Key": k})[0] for k in keys}
    put_policy(client, ops, {"weights": {"1": 60, "2": 40}})
    after = {k: served(client, app_headers, row, **{"X-Routing-Key": k})[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == 2 and after[k] == 1 for k in moved)  # only towards the gainer
    assert len(moved) / len(keys) <= 0.15, len(moved)


def test_rendezvous_moves_the_minimum_at_scale():
    def policy(w1, w2, w3=0):
        return TrafficPolicy.from_dict({"model": "m", "revision": 1, "shadow": {},
                                        "weights": {"1": w1, "2": w2, "3": w3}})

    keys = [f"k{i}" for i in range(20_000)]
    a = {k: choose_version(policy(50, 50), k)[0] for k in keys}
    b = {k: choose_version(policy(60, 40), k)[0] for k in keys}
    share = sum(a[k] == 1 for k in keys) / len(keys)
    moved = sum(a[k] != b[k] for k in keys) / len(keys)
    assert abs(share - 0.5) < 0.02 and 0.08 < moved < 0.12, (share, moved)
    c = {k: choose_version(policy(60, 40, 10), k)[0] for k in keys}
    assert all(c[k] in (b[k], 3) for k in keys)  # a new version only takes, never reshuffles


def test_pins_and_aliases_bypass_weights(client, ops, app_headers, row):
    put_policy(client, ops, {"weights": {"1": 100}})
    assert set(served(client, app_headers, row, n=20, **{"X-Model-Version": "3"})) == {3}
    client.put("/admin/models/digits/aliases/challenger", json={"version": 2}, headers=ops)
    assert set(served(client, app_headers, row, n=5, **{"X-Model-Version": "challenger"})) == {2}
    assert set(served(client, app_headers, row, n=20)) == {1}


INVALID = [
    ({"weights": {"9": 100}}, "no version"),
    ({"weights": {"1": -1}}, "non-negative"),
    ({"weights": {"1": 1.5}}, "integer"),
    ({"weights": {"1": "50"}}, "integer"),
    ({"weights": {"1": True}}, "integer"),
    ({"weights": {"1": 0, "2": 0}}, "all weights are zero"),
    ({"weights": {}}, "non-empty"),
    ({"weights": [1, 2]}, "non-empty"),
    ({"weights": {"1": 50}, "shadow": {"2": 101}}, "0 to 100"),
    ({"weights": {"1": 50}, "shadow": {"2": -5}}, "0 to 100"),
    ({"weights": {"1": 50}, "shadow": {"1": 50}}, "both a weight above 0 and a shadow"),
    ({"weights": {"1": 50}, "shadow": {"nobody": 50}}, "no version"),
    ({"weights": {"1": 50}, "colour": "red"}, "unknown fields"),
    ({"weights": {"1": 50, "x y": 5}}, "alias"),
    ({"weights": {"1": 50, "3": 50}, "reason": 7}, "reason"),
    ({"weights": {"3": 10, "1": 10}}, "archived"),
]


@pytest.mark.parametrize("body, message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_policy_is_rejected_and_nothing_changes(client, ops, app_headers, row, body,
                                                        message, db, settings):
    from registry import service

    put_policy(client, ops, {"weights": {"1": 70, "2": 30}, "reason": "before"})
    service.archive_version(db, "digits", 3, "t", "old")
    before = client.get("/admin/models/digits/traffic", headers=ops).get_json()
    response = put_policy(client, ops, body)
    assert response.status_code == 400, response.get_json()
    assert message in error_of(response)["message"]
    after = client.get("/admin/models/digits/traffic", headers=ops).get_json()
    assert after == before and after["revision"] == 1
    assert len(client.get("/admin/models/digits/traffic/history", headers=ops).get_json()[
        "revisions"]) == 1


def test_unloadable_version_is_refused(client, ops, digits, settings, db):
    from registry.store import ArtifactStore

    record = client.get("/admin/models/digits/versions/2", headers=ops).get_json()
    path = ArtifactStore(settings.model_store).path_for(record["sha256"])
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    response = put_policy(client, ops, {"weights": {"1": 50, "2": 50}})
    assert response.status_code == 400 and "fails to load" in error_of(response)["message"]


def test_stale_if_match_gets_409(client, ops, digits):
    first = put_policy(client, ops, {"weights": {"1": 100}})
    assert first.get_json()["revision"] == 1 and first.headers["ETag"] == '"1"'
    assert put_policy(client, ops, {"weights": {"2": 100}}, **{"If-Match": "1"}
                      ).status_code == 200
    stale = put_policy(client, ops, {"weights": {"3": 100}}, **{"If-Match": "1"})
    assert stale.status_code == 409 and error_of(stale)["code"] == "conflict"
    assert client.get("/admin/models/digits/traffic", headers=ops).get_json()["weights"] == \
        {"2": 100}
    bad = put_policy(client, ops, {"weights": {"3": 100}}, **{"If-Match": "soon"})
    assert bad.status_code == 400


def test_rollback_restores_the_previous_policy_and_is_audited(client, ops, app_headers, row):
    none_yet = client.post("/admin/models/digits/rollback", json={"reason": "x"}, headers=ops)
    assert none_yet.status_code == 409
    put_policy(client, ops, {"weights": {"1": 90, "2": 10}, "shadow": {"3": 100},
                             "reason": "canary"})
    put_policy(client, ops, {"weights": {"2": 100}, "reason": "promote"})
    assert set(served(client, app_headers, row, n=10)) == {2}
    back = client.post("/admin/models/digits/rollback", json={"reason": "bad canary"},
                       headers=ops).get_json()
    assert back["revision"] == 3 and back["weights"] == {"1": 90, "2": 10}
    assert back["shadow"] == {"3": 100} and back["updated_by"] == "test-ops"
    assert set(served(client, app_headers, row, n=30)) <= {1, 2}
    again = client.post("/admin/models/digits/rollback", json={}, headers=ops).get_json()
    assert again["revision"] == 4 and again["weights"] == {"2": 100}  # rollback undoes itself
    audit = client.get("/admin/audit?model=digits", headers=ops).get_json()["entries"]
    actions = [(e["action"], e["reason"]) for e in audit if e["action"].startswith("traffic")]
    assert actions[:2] == [("traffic.rollback", "rollback to revision 2"),
                           ("traffic.rollback", "bad canary")]


def test_a_version_at_weight_0_keeps_a_shadow_and_rollback_restores_it_exactly(
        client, ops, app_headers, row, app):
    """After a promotion the old version stays as a shadow: weight 0 is not primary."""
    promoted = {"weights": {"1": 0, "2": 100}, "shadow": {"1": 100}, "reason": "v2 promoted"}
    response = put_policy(client, ops, promoted)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["weights"] == {"1": 0, "2": 100}
    assert response.get_json()["shadow"] == {"1": 100}
    assert set(served(client, app_headers, row, n=30)) == {2}
    pool = app.extensions["mgw"].shadows
    deadline = time.monotonic() + 10
    while pool.completed + pool.dropped < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.completed + pool.dropped == 30 and pool.failed == 0 and pool.completed > 0
    # a version with weight may still not be a shadow
    both = put_policy(client, ops, {"weights": {"1": 1, "2": 99}, "shadow": {"1": 10}})
    assert both.status_code == 400
    assert "version(s) [1] cannot have both a weight above 0" in error_of(both)["message"]
    put_policy(client, ops, {"weights": {"3": 100}, "reason": "something else"})
    back = client.post("/admin/models/digits/rollback", json={"reason": "undo"}, headers=ops)
    assert back.status_code == 200, back.get_json()
    restored = back.get_json()
    assert (restored["revision"], restored["weights"], restored["shadow"]) == (
        3, {"1": 0, "2": 100}, {"1": 100})
    assert set(served(client, app_headers, row, n=10)) == {2}


def test_archive_is_refused_while_the_policy_uses_the_version(client, ops, digits):
    put_policy(client, ops, {"weights": {"1": 100}, "shadow": {"2": 5}})
    for version in (1, 2):
        response = client.post(f"/admin/models/digits/versions/{version}/archive",
                               json={"reason": "x"}, headers=ops)
        assert response.status_code == 409 and "traffic" in error_of(response)["message"]
    assert client.post("/admin/models/digits/versions/3/archive", json={"reason": "x"},
                       headers=ops).status_code == 200


def test_shadow_never_reaches_the_caller(client, ops, app_headers, row, app):
    put_policy(client, ops, {"weights": {"1": 100}, "shadow": {"2": 100, "3": 100}})
    versions = served(client, app_headers, row, n=50)
    assert set(versions) == {1}
    pool = app.extensions["mgw"].shadows
    deadline = time.monotonic() + 10
    while pool.completed + pool.dropped < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.completed + pool.dropped == 100 and pool.failed == 0
    assert pool.completed > 0

"""The admin API over HTTP (Flask test client) and auth on every route of the URL map."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import pytest

from registry import tokens
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of
from tests.onnx_factory import add_constant_model, unloadable_model

PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json"}  # + /v2/health/*, dashboard login


def _upload(client, headers, data: bytes, name="m", metadata=None):
    form = {"file": (io.BytesIO(data), "model.onnx")}
    if metadata is not None:
        text = metadata if isinstance(metadata, str) else orjson.dumps(metadata).decode()
        form["metadata"] = text
    return client.post(f"/admin/models/{name}/versions", data=form, headers=headers,
                       content_type="multipart/form-data")


def _concrete(rule) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: "1" if "v" in m.group(1) else "x",
                  rule.rule)


def _guarded_routes(app):
    from gateway.web.auth import PUBLIC_BLUEPRINTS

    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.split(".")[0] in PUBLIC_BLUEPRINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, _concrete(rule), rule.endpoint


def test_every_non_public_route_needs_a_token(app, client, role_tokens):
    routes = list(_guarded_routes(app))
    assert any(path.startswith("/admin") for _, path, _ in routes)
    assert any(path.startswith("/v2/models") for _, path, _ in routes)
    assert ("POST", "/predict", "predict.predict") in routes
    for method, path, endpoint in routes:
        response = client.open(path, method=method)
        assert response.status_code == 401, (method, path)
        if path.startswith("/v2"):  # the Open Inference Protocol's own error shape
            assert set(response.get_json()) == {"error"} and response.get_json()["error"]
        else:
            assert error_of(response)["code"] == "unauthorized"
        bad = client.open(path, method=method, headers=bearer("mgw_0000000000000000_nope"))
        assert bad.status_code == 401, (method, path)


def test_admin_routes_refuse_other_roles_with_403(app, client, role_tokens):
    admin_routes = [r for r in _guarded_routes(app) if r[2].startswith("admin.")]
    assert len(admin_routes) >= 6
    for role in ("app", "feedback", "analyst"):
        for method, path, _ in admin_routes:
            response = client.open(path, method=method, headers=bearer(role_tokens[role]))
            assert response.status_code == 403, (role, method, path)
            assert error_of(response)["code"] == "forbidden"


def test_analyst_routes_refuse_the_app_role_with_403(app, client, role_tokens):
    routes = [r for r in _guarded_routes(app) if r[1].startswith(("/analytics", "/dashboard"))]
    assert any(p.startswith("/analytics") for _, p, _ in routes)
    for method, path, _ in routes:
        response = client.open(path, method=method, headers=bearer(role_tokens["app"]))
        assert response.status_code == 403, (method, path)
        assert error_of(response)["code"] == "forbidden"


def test_the_feedback_role_reaches_feedback_and_nothing_else(app, client, role_tokens):
    routes = list(_guarded_routes(app))
    assert ("POST", "/feedback", "feedback.feedback") in routes
    for method, path, endpoint in routes:
        response = client.open(path, method=method, headers=bearer(role_tokens["feedback"]))
        if endpoint.startswith("feedback."):
            assert response.status_code == 400, (method, path)  # through auth; no body sent
        else:
            assert response.status_code == 403, (method, path)


def test_public_routes_are_only_health_metrics_and_login(app):
    from gateway.web.auth import PUBLIC_BLUEPRINTS

    public = sorted(r.rule for r in app.url_map.iter_rules()
                    if r.endpoint.split(".")[0] in PUBLIC_BLUEPRINTS)
    assert all(p in PUBLIC or p.startswith(("/v2/health/", "/dashboard/log")) for p in public), \
        public


def test_health_is_open(client):
    assert client.get("/healthz").get_json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["registry"] == "ok"


def test_revoked_token_stops_working(app, client, db, role_tokens):
    app.extensions["mgw_tokens"]._ttl = 0  # no cache, so revocation is visible at once
    headers = bearer(role_tokens["ops"])
    assert client.get("/admin/models", headers=headers).status_code == 200
    tokens.revoke_token(db, "test-ops", "tests")
    assert client.get("/admin/models", headers=headers).status_code == 401


def test_plaintext_tokens_are_nowhere_in_the_database(settings, db, role_tokens):
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the file check is for the SQLite file; PostgreSQL is checked by query")
    raw = Path(settings.database_url.removeprefix("sqlite:///")).read_bytes()
    for path in Path(settings.database_url.removeprefix("sqlite:///")).parent.glob("gateway.db*"):
        raw += path.read_bytes()
    for token in role_tokens.values():
        secret = token.split("_")[2]
        assert secret.encode() not in raw
        assert token.encode() not in raw
        assert token.split("_")[1].encode() in raw  # the key id is stored: the file was read


def test_plaintext_tokens_are_not_in_any_column(db, role_tokens):
    from sqlalchemy import select

    from registry.tables import ApiToken, AuditEntry

    with db.read() as session:
        dump = repr([(t.key_id, t.name, t.salt, t.secret_hash) for t in
                     session.scalars(select(ApiToken))])
        dump += repr([(a.detail, a.reason) for a in session.scalars(select(AuditEntry))])
    for token in role_tokens.values():
        assert token.split("_")[2] not in dump


def test_register_over_http_returns_the_record(client, ops, settings):
    data = add_constant_model(1.5)
    meta = {"description": "first", "aliases": ["champion"], "metrics": {"accuracy": 0.5}}
    response = _upload(client, ops, data, metadata=meta)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["version"] == 1 and body["created_by"] == "test-ops"
    assert body["aliases"] == ["champion"] and body["description"] == "first"
    assert set(body) >= {"model", "version", "sha256", "size_bytes", "inputs", "outputs",
                         "opset", "stage", "created_at", "created_by", "dataset", "params",
                         "metrics", "parent_version", "aliases"}
    assert ArtifactStore(settings.model_store).read(body["sha256"]) == data
    listed = client.get("/admin/models", headers=ops).get_json()["models"]
    assert listed[0]["model"] == "m" and listed[0]["aliases"] == {"champion": 1}
    got = client.get("/admin/models/m/versions/champion", headers=ops).get_json()
    assert got["sha256"] == body["sha256"] and got["lineage"]["ancestors"] == []


@pytest.mark.parametrize("case", ["unloadable", "bad-metadata", "unknown-key", "no-file",
                                  "bad-name", "not-multipart"])
def test_bad_registrations_get_4xx_and_store_nothing(client, ops, settings, case):
    if case == "unloadable":
        response = _upload(client, ops, unloadable_model())
    elif case == "bad-metadata":
        response = _upload(client, ops, add_constant_model(1.0), metadata="{not json")
    elif case == "unknown-key":
        response = _upload(client, ops, add_constant_model(1.0), metadata={"x": 1})
    elif case == "no-file":
        response = client.post("/admin/models/m/versions", data={"metadata": "{}"},
                               headers=ops, content_type="multipart/form-data")
    elif case == "bad-name":
        response = _upload(client, ops, add_constant_model(1.0), name="Bad..Name!")
    else:
        response = client.post("/admin/models/m/versions", data=add_constant_model(1.0),
                               headers=ops, content_type="application/octet-stream")
    assert 400 <= response.status_code < 500
    assert error_of(response)["code"] in {"invalid_input", "unsupported_media_type"}
    store = Path(settings.model_store)
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
    assert client.get("/admin/models", headers=ops).get_json()["models"] == []


def test_oversize_upload_gets_413(app, ops, settings):
    app.extensions["mgw"].settings = settings.with_(max_model_bytes=2048)
    response = _upload(app.test_client(), ops, add_constant_model(1.0, width=2048))
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


def test_alias_and_archive_over_http(client, ops):
    for c in (1.0, 2.0):
        assert _upload(client, ops, add_constant_model(c)).status_code == 201
    put = client.put("/admin/models/m/aliases/champion", json={"version": 2}, headers=ops)
    assert put.status_code == 200 and put.get_json()["version"] == 2
    assert client.put("/admin/models/m/aliases/champion", json={"version": 9},
                      headers=ops).status_code == 404
    assert client.put("/admin/models/m/aliases/7", json={"version": 1},
                      headers=ops).status_code == 400
    assert client.put("/admin/models/m/aliases/x", data="nope", headers=ops).status_code == 400
    archived = client.post("/admin/models/m/versions/1/archive", json={"reason": "old"},
                           headers=ops)
    assert archived.status_code == 200 and archived.get_json()["stage"] == "archived"
    conflict = client.post("/admin/models/m/versions/champion/archive", json={}, headers=ops)
    assert conflict.status_code == 409 and error_of(conflict)["code"] == "conflict"
    assert client.delete("/admin/models/m/aliases/champion", headers=ops).status_code == 200
    audit = client.get("/admin/audit?model=m", headers=ops).get_json()["entries"]
    assert [e["action"] for e in audit][:3] == ["alias.delete", "version.archive", "alias.set"]
    assert all(e["actor"] == "test-ops" for e in audit)


def test_unknown_things_get_404_in_the_error_shape(client, ops):
    assert error_of(client.get("/admin/models/nope/versions/1", headers=ops))["code"] == \
        "unknown_model"
    response = client.get("/no/such/route")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = client.delete("/healthz")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"

"""The private redis-server a gateway starts when GATEWAY_REDIS_URL is unset."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from gateway.redis_embedded import EmbeddedRedis
from gateway.web.app import create_app
from tests.test_cli import run


def test_started_once_shared_and_stopped(tmp_path):
    embedded = EmbeddedRedis(tmp_path / "state")
    assert not embedded.alive()
    assert embedded.ensure() is True
    try:
        assert embedded.alive() and embedded.ensure() is False  # a second starter re-uses it
        assert oct(os.stat(embedded.socket).st_mode & 0o777) == "0o700"
        pid = int(embedded.pidfile.read_text())
        assert b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        embedded.stop()
    assert not embedded.alive()


def test_app_without_redis_url_routes_through_the_embedded_server(settings, digits, ops,
                                                                   role_tokens):
    local = settings.with_(redis_url=None)
    app = create_app(local)
    try:
        client = app.test_client()
        put = client.put("/admin/models/digits/traffic", json={"weights": {"2": 100}},
                         headers=ops)
        assert put.status_code == 200
        app_headers = {"Authorization": f"Bearer {role_tokens['app']}"}
        response = client.post("/predict", json={"model": "digits",
                                                 "inputs": [digits["X"][0].tolist()]},
                               headers=app_headers)
        assert response.get_json()["version"] == 2
        assert EmbeddedRedis(local.state_dir).alive()
    finally:
        app.extensions["mgw"].close()
        EmbeddedRedis(local.state_dir).stop()


def test_cli_traffic_commands(on_sqlite_only, tmp_path, settings, digits):
    env = {"GATEWAY_DATABASE_URL": settings.database_url,
           "GATEWAY_MODEL_STORE": str(settings.model_store),
           "GATEWAY_REDIS_URL": settings.redis_url, "GATEWAY_REDIS_PREFIX": settings.redis_prefix}
    run(["traffic", "set", "digits", "1=90", "2=10", "--shadow", "3=100", "--reason", "canary"],
        tmp_path, env)
    shown = orjson.loads(run(["traffic", "show", "digits", "--json"], tmp_path, env).stdout)
    assert shown["weights"] == {"1": 90, "2": 10} and shown["shadow"] == {"3": 100}
    run(["traffic", "set", "digits", "2=100", "--reason", "promote"], tmp_path, env)
    text = run(["traffic", "rollback", "digits", "--reason", "oops"], tmp_path, env).stdout
    assert "revision 3" in text and "1=90 2=10" in text
    history = orjson.loads(run(["traffic", "history", "digits", "--json"], tmp_path, env).stdout)
    assert [(r["revision"], r["action"]) for r in history] == [(3, "rollback"), (2, "set"),
                                                               (1, "set")]
    bad = run(["traffic", "set", "digits", "1=-5", "--reason", "x"], tmp_path, env, check=False)
    assert bad.returncode == 2 and "non-negative" in bad.stderr and "Traceback" not in bad.stderr
    bad = run(["traffic", "set", "digits", "1=50", "--shadow", "1=5", "--reason", "x"], tmp_path,
              env, check=False)
    assert bad.returncode == 2 and "both a weight above 0 and a shadow" in bad.stderr

"""The `gateway` command as a user runs it: a real process, real files, real databases.

Each test here spawns several `gateway` processes; those whose subject is the command itself
run once, on SQLite. The CLI on PostgreSQL is exercised by tests/test_outcomes.py (compare,
export, prune as processes) and by the tests using the in-process `cli` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.onnx_factory import add_constant_model

GATEWAY = [sys.executable, "-m", "gateway.cli.main"]


def run(args, cwd: Path, env_extra: dict[str, str] | None = None, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(env_extra or {})
    result = subprocess.run(GATEWAY + args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def cli_env(settings) -> dict[str, str]:
    return {"GATEWAY_DATABASE_URL": settings.database_url,
            "GATEWAY_MODEL_STORE": str(settings.model_store)}


def test_register_show_alias_archive_round_trip(on_sqlite_only, tmp_path, cli_env):
    model = tmp_path / "m.onnx"
    model.write_bytes(add_constant_model(1.0))
    out = run(["models", "register", "m", str(model), "--json",
               "--metadata", '{"description": "one", "metrics": {"accuracy": 0.75}}'],
              tmp_path, cli_env)
    record = orjson.loads(out.stdout)
    assert record["version"] == 1 and record["created_by"].startswith("cli")
    model.write_bytes(add_constant_model(2.0))
    run(["models", "register", "m", str(model), "--metadata", '{"parent_version": 1}'],
        tmp_path, cli_env)
    table = run(["models", "list"], tmp_path, cli_env).stdout.splitlines()
    assert table[0].split()[:3] == ["MODEL", "VERSION", "STAGE"]
    assert [line.split()[1] for line in table[1:]] == ["1", "2"]
    assert "0.7500" in table[1]
    run(["models", "alias", "m", "champion", "2"], tmp_path, cli_env)
    shown = orjson.loads(run(["models", "show", "m", "champion", "--json"], tmp_path,
                             cli_env).stdout)
    assert shown["version"] == 2 and shown["lineage"]["ancestors"] == [1]
    run(["models", "archive", "m", "1", "--reason", "old"], tmp_path, cli_env)
    listed = orjson.loads(run(["models", "list", "--json"], tmp_path, cli_env).stdout)
    assert [v["stage"] for v in listed[0]["versions"]] == ["archived", "registered"]
    audit = orjson.loads(run(["audit", "--json"], tmp_path, cli_env).stdout)
    assert [e["action"] for e in audit][:2] == ["version.archive", "alias.set"]


def test_errors_are_one_line_without_traceback(on_sqlite_only, tmp_path, cli_env):
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"\x00garbage" * 50)
    cases = [
        ["models", "register", "m", str(garbage)],
        ["models", "register", "m", str(tmp_path / "missing.onnx")],
        ["models", "register", "BAD NAME", str(garbage)],
        ["models", "show", "nope", "1"],
        ["models", "register", "m", str(garbage), "--metadata", "{oops"],
        ["token", "revoke", "nobody"],
    ]
    for args in cases:
        result = run(args, tmp_path, cli_env, check=False)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gateway:"), (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_unmigrated_database_says_what_to_run(tmp_path):
    env = {"GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = run(["models", "list"], tmp_path, env, check=False)
    assert result.returncode == 2 and "gateway db upgrade" in result.stderr


def test_token_create_prints_the_token_last_and_it_works(on_sqlite_only, tmp_path, cli_env,
                                                        settings):
    out = run(["token", "create", "--role", "ops", "--name", "alice"], tmp_path, cli_env).stdout
    token = out.strip().splitlines()[-1]
    assert token.startswith("mgw_")
    from gateway.web.app import create_app

    client = create_app(settings).test_client()
    assert client.get("/admin/models", headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 200
    listed = run(["token", "list", "--json"], tmp_path, cli_env).stdout
    assert token.split("_")[2] not in listed and "alice" in listed
    run(["token", "revoke", "alice"], tmp_path, cli_env)
    assert orjson.loads(run(["token", "list", "--json"], tmp_path, cli_env).stdout)[0][
        "revoked_at"]
    # the labelling pipeline's role: through to /feedback (404: no such request), not beyond
    out = run(["token", "create", "--role", "feedback", "--name", "labeller"], tmp_path,
              cli_env).stdout
    labeller = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
    answer = client.post("/feedback", json={"request_id": "none", "label": 1}, headers=labeller)
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"
    assert client.get("/admin/models", headers=labeller).status_code == 403
    bad = run(["token", "create", "--role", "root", "--name", "x"], tmp_path, cli_env,
              check=False)
    assert bad.returncode == 2 and "feedback" in bad.stderr


def test_demo_sets_up_from_an_empty_directory_in_under_a_minute(tmp_path):
    started = time.monotonic()
    first = run(["demo", "--no-serve"], tmp_path)
    took = time.monotonic() - started
    assert took < 60, took
    assert "digits versions logreg=1, forest=2, mlp=3" in first.stdout
    listed = orjson.loads(run(["models", "list", "--json"], tmp_path).stdout)
    versions = listed[0]["versions"]
    assert [v["parent_version"] for v in versions] == [None, 1, 1]
    assert all(v["metrics"]["accuracy"] > 0.9 for v in versions)
    assert listed[0]["aliases"] == {"challenger": 3, "champion": 1}
    # the progressive rollout of mlp over logreg has begun, forest shadowing
    rollout = orjson.loads(run(["rollout", "status", "digits", "--json"], tmp_path).stdout)
    assert (rollout["candidate"], rollout["baseline"], rollout["weight"]) == (3, 1, 10)
    assert rollout["state"] == "running" and rollout["previous_policy"]["shadow"] == {"2": 100}
    again = run(["demo", "--no-serve"], tmp_path)  # idempotent: same versions, new tokens
    assert "logreg=1, forest=2, mlp=3" in again.stdout
    assert "rollout already ran" in again.stdout
    assert orjson.loads(run(["rollout", "status", "digits", "--json"], tmp_path).stdout)[
        "id"] == rollout["id"]
    tokens = orjson.loads(run(["token", "list", "--json"], tmp_path).stdout)
    assert sum(t["revoked_at"] is None for t in tokens) == 4 and len(tokens) == 8

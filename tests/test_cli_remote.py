"""The remote CLI: the same `gateway` commands against a live `gateway serve` with
`--url`/`--token` (or GATEWAY_URL/GATEWAY_TOKEN), printing the same `--json` as the local form,
with the token's name in the audit trail and the server's error on one line."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from registry import service
from tests.conftest import server_env
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(240)

# read commands whose --json must be identical locally and over HTTP
SAME_JSON = [
    ("models", "list"),
    ("models", "show", "digits"),
    ("models", "show", "digits", "1"),
    ("models", "show", "digits", "champion"),
    ("models", "diff", "digits", "1", "3"),
    ("models", "gate", "digits"),
    ("traffic", "show", "digits"),
    ("traffic", "history", "digits"),
    ("rollout", "status", "digits"),
    ("audit", "--limit", "20"),
    ("audit", "--model", "digits", "--limit", "5"),
    ("analytics", "compare", "digits"),
    ("analytics", "compare", "nosuch"),
]


@pytest.fixture
def live(settings, digits, role_tokens, tmp_path, database_url, examples_dir, cli, capsys):
    """A gateway (2 workers) on this test's stores, with an evaluated version, a gate, an
    alias and a policy to read back. SQLite only: the client's side does not depend on the
    server's database, and the served routes run on PostgreSQL in their own tests."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the remote CLI is the same whatever database the gateway uses")
    for argv in (("models", "evaluate", "digits", "1", "--dataset",
                  str(examples_dir / "digits_test.npz")),
                 ("models", "alias", "digits", "champion", "1"),
                 ("traffic", "set", "digits", "1=90", "2=10", "--reason", "split"),
                 ("models", "gate", "digits", "--rule", "accuracy >= 0.5", "--reason", "t")):
        status, _, err = cli(capsys, *argv)
        assert status == 0, (argv, err)
    with gateway_server(server_env(settings), cwd=tmp_path) as base:
        yield base


def run_json(cli: Any, capsys: Any, *argv: str) -> tuple[int, Any, str]:
    status, out, err = cli(capsys, *argv, "--json")
    return status, (orjson.loads(out) if status == 0 else None), err


def test_read_commands_print_the_same_json_locally_and_remotely(live, cli, capsys,
                                                                 role_tokens):
    remote = ("--url", live, "--token", role_tokens["ops"])
    for argv in SAME_JSON:
        local_status, local, local_err = run_json(cli, capsys, *argv)
        remote_status, over_http, remote_err = run_json(cli, capsys, *argv, *remote)
        assert local_status == remote_status, (argv, local_err, remote_err)
        assert local == over_http, argv
        assert local_err == remote_err, argv  # an error is the same line either way
    status, shown, _ = run_json(cli, capsys, "models", "show", "digits", "1", *remote)
    assert shown["evaluation"]["metrics"]["accuracy"] > 0.5 and shown["gate"]["passed"]


def test_changes_over_http_are_audited_under_the_token(live, cli, capsys, role_tokens, db,
                                                       examples_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("GATEWAY_URL", live)  # the environment form
    monkeypatch.setenv("GATEWAY_TOKEN", role_tokens["ops"])
    status, policy, err = run_json(cli, capsys, "traffic", "set", "digits", "1=100",
                                   "--reason", "from ci")
    assert status == 0, err
    assert policy["weights"] == {"1": 100} and policy["updated_by"] == "test-ops"
    import onnx

    retrained = onnx.load(str(examples_dir / "forest.onnx"))
    retrained.doc_string = "retrained by ci"  # other bytes, the same model
    onnx.save(retrained, str(tmp_path / "forest-ci.onnx"))
    status, record, err = run_json(cli, capsys, "models", "register", "digits",
                                   str(tmp_path / "forest-ci.onnx"), "--metadata",
                                   '{"params": {"trees": 50}, "parent_version": 2}')
    assert status == 0, err
    assert record["version"] == 4 and record["created_by"] == "test-ops"
    assert service.get_version(db, "digits", 4)["sha256"] == record["sha256"]
    status, evaluation, err = run_json(cli, capsys, "models", "evaluate", "digits", "4",
                                       "--dataset", str(examples_dir / "digits_test.npz"))
    assert status == 0, err
    assert evaluation["version"] == 4 and evaluation["created_by"] == "test-ops"
    status, out, err = cli(capsys, "models", "alias", "digits", "champion", "4", "--reason",
                           "ci")
    assert status == 0 and "digits:champion -> version 4 (was 1)" in out, err
    status, entries, _ = run_json(cli, capsys, "audit", "--model", "digits", "--limit", "4")
    assert {e["actor"] for e in entries} == {"test-ops"}
    status, rolled, err = run_json(cli, capsys, "traffic", "rollback", "digits", "--reason",
                                   "back")
    assert status == 0 and rolled["weights"] == {"1": 90, "2": 10}, err


def test_remote_errors_are_one_line_with_the_servers_code(live, cli, capsys, role_tokens,
                                                          tmp_path):
    ops = ("--url", live, "--token", role_tokens["ops"])
    status, out, err = cli(capsys, "models", "show", "nosuch", *ops)
    assert status == 2 and out == ""
    assert err == "gateway: unknown_model: model 'nosuch' is not registered\n"
    status, _, err = cli(capsys, "traffic", "set", "digits", "1=100", "--reason", "x", "--url",
                         live, "--token", role_tokens["analyst"])
    assert status == 2 and err.startswith("gateway: forbidden: ") and err.count("\n") == 1
    status, _, err = cli(capsys, "models", "list", "--url", live, "--token", "mgw_bad.token")
    assert status == 2 and err.startswith("gateway: unauthorized: ")
    status, _, err = cli(capsys, "models", "list", "--url", "http://127.0.0.1:9",
                         "--token", "t")
    assert status == 2 and err.startswith("gateway: unavailable: cannot reach the gateway")
    status, _, err = cli(capsys, "models", "list", "--url", live)
    assert status == 2 and "needs a token" in err
    status, _, err = cli(capsys, "--url", live, "serve")
    assert status == 2 and "own host only" in err
    status, _, err = cli(capsys, "--url", live, "--token", role_tokens["ops"], "outcomes",
                         "prune")
    assert status == 2 and "own host only" in err
    status, _, err = cli(capsys, "models", "register", "digits", str(tmp_path / "none.onnx"),
                         *ops)
    assert status == 2 and "cannot read" in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    status, _, err = cli(capsys, "models", "register", "digits", str(bad), *ops)
    assert status == 2 and err.startswith("gateway: invalid_input: ")


def test_analytics_batching_and_quantize_over_http(live, cli, capsys, role_tokens, db,
                                                   digits, examples_dir):
    ops = ("--url", live, "--token", role_tokens["ops"])
    for i in range(3):  # a few outcomes to export
        from tests.test_routing_served import call

        code, _ = call(live, "POST", "/predict", role_tokens["app"],
                       {"model": "digits", "inputs": [digits["X"][i].tolist()]})
        assert code == 200
    import time

    deadline = time.monotonic() + 10
    while True:  # the agent writes them within a flush interval or two
        status, local_csv, _ = cli(capsys, "analytics", "export", "digits")
        if local_csv.count("\n") >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    status, remote_csv, err = cli(capsys, "analytics", "export", "digits", *ops)
    assert status == 0, err
    assert remote_csv == local_csv and local_csv.count("\n") == 4  # a header and 3 rows
    status, batching, err = run_json(cli, capsys, "models", "batching", "digits",
                                     "--max-batch", "8", "--reason", "ci", *ops)
    assert status == 0 and batching["max_batch"] == 8, err
    status, shown, _ = run_json(cli, capsys, "models", "show", "digits", "1")
    assert shown["batching"]["max_batch"] == 8
    status, _, err = cli(capsys, "models", "evaluate", "digits", "3", "--dataset",
                         str(examples_dir / "digits_test.npz"), *ops)
    assert status == 0, err
    status, _, err = cli(capsys, "models", "quantize", "digits", "3", "--dataset",
                         str(examples_dir / "digits_test.npz"), *ops)
    assert status == 2 and "--dataset works locally only" in err
    status, child, err = run_json(cli, capsys, "models", "quantize", "digits", "3", *ops)
    assert status == 0, err
    assert child["version"] == 4 and child["parent_version"] == 3
    assert child["created_by"] == "test-ops"
    assert child["quantization"]["vs_parent"]["size_ratio"] < 0.6
    assert service.get_version(db, "digits", 4)["sha256"] == child["sha256"]


def test_rollout_controls_and_archive_over_http(live, cli, capsys, role_tokens, db):
    ops = ("--url", live, "--token", role_tokens["ops"])
    status, started, err = run_json(cli, capsys, "rollout", "start", "digits", "--candidate",
                                    "2", "--force", "--reason", "ci canary", *ops)
    assert status == 0, err
    assert started["state"] == "running" and started["candidate"] == 2
    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        status, changed, err = run_json(cli, capsys, "rollout", action, "digits", "--reason",
                                        f"ci {action}", *ops)
        assert status == 0 and changed["state"] == state, (action, err)
        local_status, local, _ = run_json(cli, capsys, "rollout", "status", "digits")
        assert local == changed or local["state"] == state
    status, policy, _ = run_json(cli, capsys, "traffic", "show", "digits", *ops)
    assert policy["weights"] == {"1": 90, "2": 10}  # restored by the abort
    status, archived, err = run_json(cli, capsys, "models", "archive", "digits", "3",
                                     "--reason", "retired", *ops)
    assert status == 0 and archived["stage"] == "archived", err
    assert service.get_version(db, "digits", 3)["stage"] == "archived"
    status, _, err = cli(capsys, "models", "archive", "digits", "1", "--reason", "x", *ops)
    assert status == 2 and err.startswith("gateway: conflict: ")  # it serves traffic

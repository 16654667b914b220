"""`gateway deliver` end to end against a live `gateway serve` (2 workers, PostgreSQL),
driven only over HTTP with an ops token, while a simulated application sends predictions
(app token) and their ground truth or reward (feedback token): promoted (exit 0), refused by
the gate (exit 3, no traffic given), rolled back on live reward that the offline dataset
cannot see (exit 4), no verdict in time (exit 5, the previous policy restored)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from registry import service, tokens
from tests.conftest import server_env
from tests.onnx_factory import weakened_digits_model
from tests.server import gateway_server
from tests.test_routing_served import call

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("served once, on the production database; the commands are the same")


@pytest.fixture
def live(settings, db, digits, role_tokens, tmp_path, postgres_only, cli, capsys
         ) -> Iterator[str]:
    """digits version 1 (logistic regression) serves everything and is the champion; the gate
    wants accuracy of at least 0.9 and no worse than the champion's by 0.05."""
    for argv in (("models", "evaluate", "digits", "1", "--dataset",
                  str(digits["paths"]["logreg"].parent / "digits_test.npz")),
                 ("models", "alias", "digits", "champion", "1"),
                 ("traffic", "set", "digits", "1=100", "--reason", "logreg serves"),
                 ("models", "gate", "digits", "--rule", "accuracy >= 0.9", "--rule",
                  "accuracy >= champion - 0.05", "--reason", "release bar")):
        status, _, err = cli(capsys, *argv)
        assert status == 0, (argv, err)
    env = {**server_env(settings), "GATEWAY_ROLLOUT_INTERVAL": "0.3"}
    with gateway_server(env, cwd=tmp_path) as base:
        yield base


def other_bytes(path: Path, out: Path) -> Path:
    """The same model under other bytes: a "retrained" file the registry takes as new."""
    model = onnx.load(str(path))
    model.doc_string = "retrained in ci"
    onnx.save(model, str(out))
    return out


class Application(threading.Thread):
    """Sends /predict with the app token and feedback with the feedback token until stopped:
    `feedback(version, row index)` returns the item's label/reward fields."""

    def __init__(self, base: str, app: str, feedback_token: str, X: np.ndarray,
                 feedback: Callable[[int, int], dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.base, self.app, self.feedback_token = base, app, feedback_token
        self.X, self.feedback = X, feedback
        self.stop = threading.Event()
        self.sent = 0
        self.errors: list[Any] = []

    def run(self) -> None:
        rng = np.random.default_rng(5)
        while not self.stop.is_set():
            items = []
            for i in rng.integers(0, len(self.X), 40):
                code, body = call(self.base, "POST", "/predict", self.app,
                                  {"model": "digits", "inputs": [self.X[i].tolist()]})
                if code != 200:
                    self.errors.append(body)
                    continue
                items.append({"request_id": body["request_id"],
                              **self.feedback(body["version"], int(i))})
            code, body = call(self.base, "POST", "/feedback", self.feedback_token,
                              {"items": items})
            if code != 200:
                self.errors.append(body)
            self.sent += len(items)


def deliver(cli: Any, capsys: Any, base: str, ops: str, *argv: str) -> tuple[int, str, str]:
    return cli(capsys, "deliver", "digits", *argv, "--url", base, "--token", ops)


def test_a_better_model_is_promoted(live, cli, capsys, db, digits, role_tokens, tmp_path):
    feedback = tokens.create_token(db, "feedback", "sim-feedback", "tests")
    y = digits["y"]
    app = Application(live, role_tokens["app"], feedback, digits["X"],
                      lambda _version, i: {"label": int(y[i])})
    app.start()
    try:
        status, out, err = deliver(
            cli, capsys, live, role_tokens["ops"],
            str(other_bytes(digits["paths"]["mlp"], tmp_path / "mlp-ci.onnx")),
            "--dataset", str(digits["paths"]["mlp"].parent / "digits_test.npz"),
            "--metadata", '{"dataset": {"name": "digits", "version": "2", "sha256": "'
            + "c" * 64 + '"}, "params": {"hidden": 64}}',
            "--steps", "50,100", "--min-samples", "60", "--max-regression", "0.05",
            "--timeout", "150", "--poll", "0.5")
    finally:
        app.stop.set()
        app.join(30)
    assert status == 0, out + err
    assert not app.errors, app.errors[:3]
    assert "promoted: version 4" in out and "audit trail of digits version 4" in out
    record = service.get_version(db, "digits", 4)
    assert "champion" in record["aliases"] and record["created_by"] == "test-ops"
    assert record["dataset"]["sha256"] == "c" * 64
    code, policy = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    assert code == 200 and policy["weights"] == {"4": 100}


def test_a_weakened_model_is_refused_by_the_gate(live, cli, capsys, db, digits, role_tokens,
                                                 tmp_path):
    weak = tmp_path / "weak.onnx"
    weak.write_bytes(weakened_digits_model())
    code, before = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    status, out, err = deliver(cli, capsys, live, role_tokens["ops"], str(weak), "--dataset",
                               str(digits["paths"]["mlp"].parent / "digits_test.npz"))
    assert status == 3, out + err
    assert "refused by the gate" in out and "accuracy >= 0.9" in out
    code, after = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    assert after == before  # no traffic given, not even a shadow
    assert call(live, "GET", "/admin/models/digits/rollout", role_tokens["ops"])[0] == 404
    assert service.get_version(db, "digits", 4)["aliases"] == []


def test_a_model_that_loses_on_live_reward_is_rolled_back(live, cli, capsys, db, digits,
                                                          role_tokens, tmp_path):
    """Offline it is as good as the champion (the same graph); live, the application rewards
    the answers of version 1 and not those of the candidate: only the rollout can see that."""
    feedback = tokens.create_token(db, "feedback", "sim-feedback", "tests")
    app = Application(live, role_tokens["app"], feedback, digits["X"],
                      lambda version, _i: {"reward": 1.0 if version == 1 else 0.0})
    app.start()
    try:
        status, out, err = deliver(
            cli, capsys, live, role_tokens["ops"],
            str(other_bytes(digits["paths"]["logreg"], tmp_path / "logreg-ci.onnx")),
            "--dataset", str(digits["paths"]["logreg"].parent / "digits_test.npz"),
            "--metric", "reward", "--steps", "50,100", "--min-samples", "40",
            "--timeout", "150", "--poll", "0.5")
    finally:
        app.stop.set()
        app.join(30)
    assert status == 4, out + err
    assert "rolled back" in out
    code, policy = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    assert policy["weights"] == {"1": 100}
    assert service.get_version(db, "digits", 1)["aliases"] == ["champion"]


def test_no_verdict_in_time_aborts_and_restores_the_policy(live, cli, capsys, db, digits,
                                                           role_tokens, tmp_path):
    code, before = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    status, out, err = deliver(
        cli, capsys, live, role_tokens["ops"],
        str(other_bytes(digits["paths"]["mlp"], tmp_path / "mlp-ci.onnx")),
        "--dataset", str(digits["paths"]["mlp"].parent / "digits_test.npz"),
        "--timeout", "2", "--poll", "0.3")  # no traffic at all: no verdict can come
    assert status == 5, out + err
    assert "no verdict within 2 s" in out
    code, after = call(live, "GET", "/admin/models/digits/traffic", role_tokens["ops"])
    assert (after["weights"], after["shadow"]) == (before["weights"], before["shadow"])
    code, rollout = call(live, "GET", "/admin/models/digits/rollout", role_tokens["ops"])
    assert rollout["state"] == "aborted"

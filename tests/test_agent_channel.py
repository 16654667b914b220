"""The worker-to-agent channel over a real unix datagram socket: rows arrive as they were
recorded (arrays included) and summarise exactly as the worker would have summarised them;
a refused send leaves the rows with the worker."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from sqlalchemy import select

from gateway.agent.channel import (
    MAX_DATAGRAM,
    AgentSender,
    decode_rows,
    decode_shadow,
    encode_shadow,
)
from gateway.agent.main import bind
from gateway.outcomes.log import complete_row
from gateway.serving.shadow import ShadowCopy
from registry.tables import Outcome
from tests.outcome_rows import outcome


def _rows(count: int) -> list:
    rows = []
    for i in range(count):
        row = outcome(i)
        row["outputs"]["probabilities"] = np.linspace(0, 1, 10, dtype=np.float32)[None, :]
        row["inputs"] = (np.arange(64, dtype=np.float32).reshape(1, 64) + i,)  # sampled
        row["caller"] = "0123456789abcdef"
        rows.append(row)
    return rows


def test_rows_cross_the_socket_and_summarise_as_in_the_worker(tmp_path):
    path = tmp_path / "agent.sock"
    receiver = bind(path)  # the agent's own socket set-up
    receiver.settimeout(5)
    datagrams: list[bytes] = []
    done = threading.Event()

    def receive() -> None:  # the agent's loop, reading as the worker sends (decoded after)
        while not done.is_set():
            try:
                datagrams.append(receiver.recv(MAX_DATAGRAM))
            except TimeoutError:
                return

    reader = threading.Thread(target=receive)
    reader.start()
    sender = AgentSender(str(path))
    rows = _rows(2000)  # several datagrams, more than the kernel lets be in flight at once
    assert sender.send(rows)
    deadline = time.monotonic() + 10
    while sum(len(decode_rows(d)) for d in list(datagrams)) < 2000:
        assert time.monotonic() < deadline, "not every row arrived"
        time.sleep(0.05)
    done.set()
    reader.join(10)
    received = [row for data in datagrams for row in decode_rows(data)]
    assert len(received) == 2000 and sender.sent == 2000
    for original, arrived in zip(rows, received, strict=True):
        want = complete_row({**original, "outputs": dict(original["outputs"])})
        got = complete_row(arrived)
        assert got["ts"] == want["ts"] and got["caller"] == want["caller"]
        # float32 outputs travel as their shortest text (0.11111111), not float64 expansions
        assert got["prediction"].keys() == want["prediction"].keys()
        for name in want["prediction"]:
            np.testing.assert_allclose(got["prediction"][name], want["prediction"][name],
                                       rtol=1e-6)
        assert got["predicted_label"] == want["predicted_label"]
        np.testing.assert_allclose(np.asarray(got["inputs"]), np.asarray(want["inputs"]))
    receiver.close()
    sender.close()


def test_a_send_nobody_receives_is_refused_and_counted(tmp_path):
    sender = AgentSender(str(tmp_path / "nobody.sock"))
    assert not sender.send(_rows(3))  # no agent: the worker keeps them
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / "stuck.sock"))  # an agent that never reads
    slow = AgentSender(str(tmp_path / "stuck.sock"))
    assert not slow.send(_rows(2000))  # refused after a bounded wait, not hung
    assert sender.refused == 3 and slow.refused == 2000 and slow.sent == sender.sent == 0
    stuck.close()


def test_a_shadow_copy_crosses_as_raw_arrays(tmp_path):
    path = tmp_path / "agent.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    inputs = {"input": np.random.default_rng(1).random((3, 64), dtype=np.float32),
              "mask": np.array([[True, False]]), "ids": np.arange(6, dtype=np.int64)[::2],
              "empty": np.zeros((0, 4), dtype=np.float64)}
    copy = ShadowCopy("digits", 3, "req-1", 7, "f" * 64, inputs)
    sender = AgentSender(str(path))
    assert sender.send_shadow(copy) is True
    arrived = decode_shadow(receiver.recv(MAX_DATAGRAM))
    assert (arrived.model, arrived.version, arrived.request_id, arrived.revision,
            arrived.fingerprint) == ("digits", 3, "req-1", 7, "f" * 64)
    assert arrived.inputs.keys() == inputs.keys()
    for name, value in inputs.items():
        assert arrived.inputs[name].dtype == value.dtype
        np.testing.assert_array_equal(arrived.inputs[name], value)
    # too large for one datagram, or not numbers: not for the channel (the worker runs it)
    big = ShadowCopy("digits", 3, "r", None, "f", {"x": np.zeros((1000, 64), np.float32)})
    text = ShadowCopy("digits", 3, "r", None, "f", {"x": np.array(["a"], dtype=object)})
    assert encode_shadow(big) is None and sender.send_shadow(big) is None
    assert sender.send_shadow(text) is None
    receiver.close()
    sender.close()


def test_a_shadow_copy_nobody_takes_is_dropped_at_once(tmp_path):
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / "stuck.sock"))  # an agent that never reads
    sender = AgentSender(str(tmp_path / "stuck.sock"))
    copy = ShadowCopy("digits", 1, "r", None, "f", {"x": np.zeros((32, 512), np.float32)})
    started = time.perf_counter()
    results = [sender.send_shadow(copy) for _ in range(200)]  # ~13 MB: the queue fills
    elapsed = time.perf_counter() - started
    assert results[0] is True and results[-1] is False, results
    assert elapsed < 1.0, elapsed  # never waits: each refused send returns at once
    assert AgentSender(str(tmp_path / "nobody.sock")).send_shadow(copy) is False
    stuck.close()


@pytest.mark.parametrize("data", [
    b"S", b"S\x05\x00\x00\x00{}",
    b"S" + (30).to_bytes(4, "little") + b'{"inputs":[["x","<f4",[-1]]]}',
    b"S" + (29).to_bytes(4, "little") + b'{"inputs":[["x","<f4",[4]]]}' + b"\0" * 8,
    b"S" + (29).to_bytes(4, "little") + b'{"inputs":[["x","|O",[1]]]}' + b"\0" * 8,
])
def test_a_malformed_shadow_datagram_is_refused(data):
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_shadow(data)


def test_workers_hand_shadow_copies_to_the_agent_which_runs_and_logs_them(
        settings, digits, db, tmp_path):
    """The worker's data plane sends the copy instead of running it (its own pool stays
    empty); the agent's receiver runs it and logs the shadow row, whose prediction is what
    onnxruntime gives for that version on the same input."""
    from gateway.agent.main import Receiver
    from gateway.services import build_services

    path = tmp_path / "agent.sock"
    agent_end = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    agent_end.bind(str(path))
    agent_end.settimeout(5)
    worker = build_services(settings.with_(agent_socket=path))
    agent = build_services(settings, background=False)
    try:
        worker.traffic.set("digits", {"weights": {"1": 100}, "shadow": {"3": 100},
                                      "reason": "shadow test"}, "tests", None)
        x = digits["X"][:4].astype(np.float32)
        result = worker.dataplane.infer(
            "digits", None, lambda _version: ({"input": x}, None), "shadowed-1")
        assert result.version == 1 and len(result.deferred) == 1
        result.run_deferred()
        assert worker.shadows.submitted == 0  # nothing ran in the worker
        receive = Receiver(agent, agent.outcomes)
        receive(agent_end.recv(MAX_DATAGRAM))
        deadline = time.monotonic() + 10
        while agent.shadows.completed < 1:
            assert time.monotonic() < deadline, "the agent never ran the copy"
            time.sleep(0.01)
        agent.outcomes.flush()
        with db.read() as session:
            row = session.scalars(select(Outcome).where(Outcome.request_id == "shadowed-1",
                                                        Outcome.kind == "shadow")).one()
        mlp = ort.InferenceSession(str(digits["paths"]["mlp"]),
                                   providers=["CPUExecutionProvider"])
        names = [o.name for o in mlp.get_outputs()]
        expected = dict(zip(names, mlp.run(None, {"input": x}), strict=True))
        assert row.version == 3 and row.status == 200 and row.reason == "shadow"
        label_name = names[0]
        assert row.prediction is not None
        np.testing.assert_array_equal(np.asarray(row.prediction[label_name]),
                                      expected[label_name])
    finally:
        agent_end.close()
        worker.close()
        agent.close()

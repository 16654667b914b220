"""The worker-to-agent channel over a real unix datagram socket: rows arrive as they were
recorded (arrays included) and summarise exactly as the worker would have summarised them;
a refused send leaves the rows with the worker."""

from __future__ import annotations

import socket
import threading

import numpy as np

from gateway.agent.channel import MAX_DATAGRAM, AgentSender, decode_rows
from gateway.outcomes.log import complete_row
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
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    received: list = []

    def receive() -> None:  # the agent's loop, reading as the worker sends
        while len(received) < 2000:
            received.extend(decode_rows(receiver.recv(MAX_DATAGRAM)))

    reader = threading.Thread(target=receive)
    reader.start()
    sender = AgentSender(str(path))
    rows = _rows(2000)  # several datagrams, more than the kernel lets be in flight at once
    assert sender.send(rows)
    reader.join(10)
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

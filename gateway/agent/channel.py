"""The local channel from serving workers to the agent: one unix datagram per outcome row.

Why a unix datagram socket: a send is one non-blocking syscall that either queues the whole row
or fails at once (queue full, agent gone, row too large), with no framing, no connection to
keep and nothing shared between processes that a crashed peer could leave locked; the kernel's
queue is the buffer. (A pipe needs framing and one writer per pipe; a shared-memory ring needs
a lock or a lock-free protocol across processes, for rows of a few hundred bytes.) A row that
cannot be sent is kept by the worker's own outcome log instead: nothing is dropped for it.

Rows travel as JSON (orjson): numpy arrays as lists, the timestamp as RFC 3339; the agent turns
them back into what `gateway.outcomes.log.complete_row` summarises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from registry.records import OutcomeRow

log = logging.getLogger(__name__)

AGENT_SOCKET_ENV = "MGW_AGENT_SOCKET"  # set by `gateway serve` for its workers, not by users
UNIX_PATH_MAX = 100
MAX_DATAGRAM = 256 * 1024
OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def socket_path(state_dir: Path, owner_pid: int) -> Path:
    """The agent's socket for the `gateway serve` process `owner_pid` (one agent per serve)."""
    path = Path(state_dir).resolve() / f"agent-{owner_pid}.sock"
    if len(str(path)) > UNIX_PATH_MAX:  # deep working directories: a short private path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"mgw-agent-{digest}.sock"
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()  # arrays orjson does not take natively (non-contiguous, ...)
    raise TypeError(f"cannot send {type(value).__name__}")


def encode_row(row: OutcomeRow) -> bytes:
    return orjson.dumps(row, option=OPTIONS, default=_plain)


def decode_row(data: bytes) -> OutcomeRow:
    """A row as the data plane recorded it: outputs and sampled inputs as arrays again."""
    from datetime import datetime

    row = orjson.loads(data)
    row["ts"] = datetime.fromisoformat(row["ts"])
    outputs = row.get("outputs")
    if outputs is not None:
        row["outputs"] = {name: np.asarray(value) for name, value in outputs.items()}
    if isinstance(row.get("inputs"), list):  # sampled for drift: arrays in signature order
        row["inputs"] = tuple(np.asarray(value) for value in row["inputs"])
    return cast(OutcomeRow, row)


class AgentSender:
    """The worker's end: `send` never blocks and never waits; False means "keep it yourself"."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pid = -1
        self.sent = 0
        self.refused = 0

    def _socket(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():  # not shared across a fork
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pid = os.getpid()
        return self._sock

    def send(self, row: OutcomeRow) -> bool:
        try:
            data = encode_row(row)
            if len(data) > MAX_DATAGRAM:
                self.refused += 1
                return False
            self._socket().sendto(data, self.path)
        except (OSError, TypeError, orjson.JSONEncodeError):
            # queue full (BlockingIOError), agent gone (ConnectionRefused, FileNotFound), ...
            self.refused += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

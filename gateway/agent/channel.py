"""The local channel from serving workers to the agent: unix datagrams of outcome rows.

A request thread only appends its row to the worker's buffer, as before. The worker's flusher
thread, every 0.2 s, sends what accumulated as a few datagrams instead of summarising and
inserting it itself: encoding a batch and one `sendto` per datagram are all the work left in
the worker. Measured the other way round first, one datagram per request from the request
thread cost more than it saved (digits c8: 0.88x of the in-worker log).

Why a unix datagram socket: a send is one non-blocking syscall that either queues the whole
datagram or fails at once (queue full, agent gone), with no framing, no connection to keep and
nothing shared between processes that a crashed peer could leave locked. A batch the socket
refuses is written by the worker's own outcome log instead: nothing is dropped for it.

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
SEND_WAIT_S = 0.05
MAX_DATAGRAM = 200 * 1024  # under Linux's default socket buffers (212,992 bytes)
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


def encode_rows(rows: list[OutcomeRow]) -> bytes:
    return orjson.dumps(rows, option=OPTIONS, default=_plain)


def decode_rows(data: bytes) -> list[OutcomeRow]:
    """Rows as the data plane recorded them: outputs and sampled inputs as arrays again."""
    from datetime import datetime

    rows = orjson.loads(data)
    for row in rows:
        row["ts"] = datetime.fromisoformat(row["ts"])
        outputs = row.get("outputs")
        if outputs is not None:
            row["outputs"] = {name: np.asarray(value) for name, value in outputs.items()}
        if isinstance(row.get("inputs"), list):  # sampled for drift: arrays in signature order
            row["inputs"] = tuple(np.asarray(value) for value in row["inputs"])
    return cast(list[OutcomeRow], rows)


class AgentSender:
    """The worker's end: False means "keep them yourself". Called by the worker's flusher
    thread with each batch it takes (every 0.2 s), never by a request, which only appends
    its row to the worker's buffer; a send waits at most `SEND_WAIT_S` per datagram."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pid = -1
        self.sent = 0
        self.refused = 0

    def _socket(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():  # not shared across a fork
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # the kernel lets one sender have ~200 KB in flight: a batch of several datagrams
            # waits a moment for the agent to read the first ones (this is the flusher
            # thread, never a request); longer than that, the worker keeps the batch
            self._sock.settimeout(SEND_WAIT_S)
            self._pid = os.getpid()
        return self._sock

    def send(self, rows: list[OutcomeRow]) -> bool:
        """Send the rows in as few datagrams as fit; all or nothing is the agent's, so a
        refusal part-way keeps every row here (the agent's insert ignores duplicates)."""
        try:
            for part in self._parts(rows):
                self._socket().sendto(part, self.path)
        except (OSError, TypeError, ValueError, orjson.JSONEncodeError):
            # queue still full (TimeoutError), agent gone (ConnectionRefused, FileNotFound)
            self.refused += len(rows)
            return False
        self.sent += len(rows)
        return True

    def _parts(self, rows: list[OutcomeRow]) -> list[bytes]:
        data = encode_rows(rows)
        if len(data) <= MAX_DATAGRAM:
            return [data]
        if len(rows) == 1:
            raise ValueError("one outcome row is larger than a datagram")
        half = len(rows) // 2
        return self._parts(rows[:half]) + self._parts(rows[half:])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

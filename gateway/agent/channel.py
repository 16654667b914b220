"""The local channel from serving workers to the agent: unix datagrams of outcome rows and
shadow copies.

A request thread only appends its row to the worker's buffer, as before. The worker's flusher
thread, every 0.2 s, sends what accumulated as a few datagrams instead of summarising and
inserting it itself: encoding a batch and one `sendto` per datagram are all the work left in
the worker. Measured the other way round first, one datagram per request from the request
thread cost more than it saved (digits c8: 0.88x of the in-worker log).

Why a unix datagram socket: a send is one non-blocking syscall that either queues the whole
datagram or fails at once (queue full, agent gone), with no framing, no connection to keep and
nothing shared between processes that a crashed peer could leave locked. A batch the socket
refuses is written by the worker's own outcome log instead: nothing is dropped for it.

Shadow copies are sent by the request thread once its response is out, one datagram each, on
a non-blocking socket of their own: a copy the socket will not take at once (agent busy or
down) is dropped and counted, as a full shadow pool drops it. A copy travels as `S`, a 4-byte
header length, a JSON header (model, version, request id, revision, fingerprint, and each
input's name, dtype and shape) and the inputs' raw bytes, so arrays cross without a text form.

Rows travel as JSON (orjson): numpy arrays as lists, the timestamp as RFC 3339; the agent turns
them back into what `gateway.outcomes.log.complete_row` summarises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from gateway.serving.shadow import ShadowCopy
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


SHADOW_TAG = b"S"
_HEADER_LENGTH = struct.Struct("<I")


def encode_shadow(copy: ShadowCopy) -> bytes | None:
    """The copy as one datagram; None when it cannot travel as one (too large, not numeric)."""
    arrays = [(name, np.ascontiguousarray(value)) for name, value in copy.inputs.items()]
    if any(a.dtype.hasobject for _, a in arrays):
        return None
    if sum(a.nbytes for _, a in arrays) > MAX_DATAGRAM - 4096:
        return None
    header = orjson.dumps({"model": copy.model, "version": copy.version,
                           "request_id": copy.request_id, "revision": copy.revision,
                           "fingerprint": copy.fingerprint,
                           "inputs": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]})
    return b"".join([SHADOW_TAG, _HEADER_LENGTH.pack(len(header)), header,
                     *(a.tobytes() for _, a in arrays)])


def decode_shadow(data: bytes) -> ShadowCopy:
    """Raises ValueError (or KeyError, TypeError) on a datagram our workers did not make."""
    if not data.startswith(SHADOW_TAG) or len(data) < 5:
        raise ValueError("not a shadow copy")
    (length,) = _HEADER_LENGTH.unpack_from(data, 1)
    header = orjson.loads(data[5:5 + length])
    offset = 5 + length
    inputs: dict[str, np.ndarray] = {}
    for name, dtype, shape in header["inputs"]:
        kind = np.dtype(dtype)
        if not isinstance(shape, list) or any(not isinstance(d, int) or d < 0 for d in shape):
            raise ValueError("a shadow copy's shape is not a list of sizes")
        count = int(np.prod(shape, dtype=np.int64))
        if kind.hasobject or offset + count * kind.itemsize > len(data):
            raise ValueError("a shadow copy's inputs do not match its header")
        inputs[str(name)] = np.frombuffer(data, kind, count, offset).reshape(shape)
        offset += count * kind.itemsize
    if offset != len(data):
        raise ValueError("a shadow copy's inputs do not match its header")
    return ShadowCopy(str(header["model"]), int(header["version"]), str(header["request_id"]),
                      header["revision"], str(header["fingerprint"]), inputs)


class AgentSender:
    """The worker's end: False means "keep them yourself". Called by the worker's flusher
    thread with each batch it takes (every 0.2 s), never by a request, which only appends
    its row to the worker's buffer; a send waits at most `SEND_WAIT_S` per datagram."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pid = -1
        self._shadow_sock: socket.socket | None = None
        self._shadow_pid = -1
        self._lock = threading.Lock()
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

    def send_shadow(self, copy: ShadowCopy) -> bool | None:
        """From the request thread, after its response: one non-blocking send. True sent,
        False dropped (the agent's queue is full or it is down), None not sendable."""
        data = encode_shadow(copy)
        if data is None:
            return None
        sock = self._shadow_sock
        if sock is None or self._shadow_pid != os.getpid():
            with self._lock:  # request threads of a gthread worker share one socket
                if self._shadow_sock is None or self._shadow_pid != os.getpid():
                    self._shadow_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._shadow_sock.setblocking(False)
                    self._shadow_pid = os.getpid()
                sock = self._shadow_sock
        try:
            sock.sendto(data, self.path)
        except OSError:  # BlockingIOError (full), ConnectionRefused/FileNotFound (down)
            return False
        return True

    def close(self) -> None:
        for sock in (self._sock, self._shadow_sock):
            if sock is not None:
                sock.close()
        self._sock = self._shadow_sock = None

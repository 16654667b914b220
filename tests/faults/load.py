"""Client load for the fault tests: a few threads sending `/predict` in a loop, every call kept.

Each call records when it started and finished on the client's monotonic clock, its HTTP status
(None when the connection failed), the version that answered and the request id, so a test can
ask afterwards what happened in any window (before, during, after a fault) and compare the
answered ids with the outcome table.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from sqlalchemy import func, select

from registry.db import Database
from registry.tables import Outcome

# A request that takes longer than this on the client is reported as a failure with
# `error="timeout"`; it is above gunicorn's 30 s worker timeout so that a hang shows up as a
# duration, and below every test's pytest timeout.
CLIENT_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class Call:
    started: float
    finished: float
    status: int | None  # None: no HTTP answer (connection reset, refused, timed out)
    request_id: str | None  # the id the gateway answered with (or ours, if we sent one)
    version: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def duration(self) -> float:
        return self.finished - self.started


class Load:
    """`threads` clients, each with its own connection, posting one row until `stop()`."""

    def __init__(self, base: str, token: str, row: list[float], threads: int = 4,
                 caller_ids: bool = False, model: str = "digits") -> None:
        self._host = base.removeprefix("http://")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._body = orjson.dumps({"model": model, "inputs": [row]})
        self._caller_ids = caller_ids
        self._prefix = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True,
                                          name=f"load-{i}") for i in range(threads)]
        self.calls: list[Call] = []

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the clients; each finishes its current call, which is bounded by the timeout."""
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a client thread never finished"

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection(self._host, timeout=CLIENT_TIMEOUT_S)
        sent = 0
        while not self._stop.is_set():
            sent += 1
            headers = dict(self._headers)
            our_id = None
            if self._caller_ids:
                our_id = f"fault-{self._prefix}-{index}-{sent}"
                headers["X-Request-Id"] = our_id
            started = time.monotonic()
            try:
                conn.request("POST", "/predict", body=self._body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except TimeoutError:
                self._add(Call(started, time.monotonic(), None, our_id, None, "timeout"))
                conn.close()
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._add(Call(started, time.monotonic(), None, our_id, None, repr(exc)))
                conn.close()
                continue
            finished = time.monotonic()
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                payload = {"raw": raw[:200].decode(errors="replace")}
            if response.status == 200:
                self._add(Call(started, finished, 200, payload["request_id"],
                               payload["version"]))
            else:
                self._add(Call(started, finished, response.status, our_id, None,
                               repr(payload)[:300]))
        conn.close()

    def _add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def answered_between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.snapshot() if c.ok and start <= c.finished <= end]

    def wait_answers(self, count: int, timeout: float) -> None:
        """Block until `count` more answers than now have arrived (the load really runs)."""
        target = sum(c.ok for c in self.snapshot()) + count
        wait_for(lambda: sum(c.ok for c in self.snapshot()) >= target, timeout,
                 f"{count} answers")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> float:
    """Poll `predicate` every 0.1 s; the seconds it took, or an assertion error on timeout."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} not reached within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def primary_counts(db: Database) -> dict[str, int]:
    """request id -> number of primary outcome rows for it (exactly once means 1 each)."""
    with db.read() as session:
        rows = session.execute(select(Outcome.request_id, func.count())
                               .where(Outcome.kind == "primary")
                               .group_by(Outcome.request_id))
        return {rid: count for rid, count in rows}

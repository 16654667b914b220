"""The outcome log: request threads only enqueue; one flusher per process writes batches.

Trade-off chosen: an in-process buffer with bulk inserts, not a Redis stream. The hot path
costs one `deque.append` (no network round trip), and batches of hundreds of rows are one
INSERT. The price is the SIGKILL window: rows still in memory die with the process. That window
is bounded by the flush interval: a record waits at most `flush_seconds` before the flusher
takes it, so a SIGKILL loses at most the outcomes of the last `flush_seconds` plus one batch in
flight (about 0.5 s of traffic at the defaults). SIGTERM flushes everything first.

While the database is unreachable, batches are written to a spool directory (one fsynced JSONL
file per batch, renamed into place) and replayed when it returns; any process of the gateway
may replay any spool file, so a dead worker's spool is not stranded. Replays are idempotent
(ON CONFLICT DO NOTHING), so a batch that was half-written before a failure is not duplicated.

When the spool cannot be written either (disk full, unwritable), a batch goes back to the front
of the buffer, its temp file removed (a half-written file is never left to replay), and waits
for the database or the disk to return. The buffer is bounded (`GATEWAY_OUTCOME_BUFFER` rows
per process): beyond it the oldest rows are dropped, counted (`gateway_outcomes_dropped`) and
logged, so an outage costs bounded memory and a request never waits for room.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
from sqlalchemy.exc import SQLAlchemyError

from gateway.lifecycle.drift import logged_rows
from gateway.per_process import OncePerProcess
from gateway.prometheus_metrics import Metrics
from registry.db import Database
from registry.outcomes import insert_outcomes
from registry.records import OutcomeRow

log = logging.getLogger(__name__)

MAX_PREDICTION_ITEMS = 32


def input_fingerprint(inputs: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal inputs, equal fingerprints."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def summarise_prediction(outputs: dict[str, np.ndarray]) -> tuple[dict[str, Any], int | None]:
    """A compact prediction: each output's first items; and the label when there is one row.

    The label is the `label` output when the model has one, else the argmax of a single
    probability/score row, so accuracy and shadow agreement work for any classifier.
    """
    summary: dict[str, Any] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            continue
        flat = array.ravel()[:MAX_PREDICTION_ITEMS]
        summary[name] = flat.tolist() if array.ndim <= 1 else array[:4].reshape(
            min(4, array.shape[0]), -1)[:, :MAX_PREDICTION_ITEMS].tolist()
    label: int | None = None
    if "label" in outputs and np.asarray(outputs["label"]).size == 1:
        raw = np.asarray(outputs["label"]).ravel()[0]
        if np.asarray(raw).dtype.kind in "iub":
            label = int(raw)
    elif len(outputs) >= 1:
        first = np.asarray(next(iter(outputs.values())))
        if first.ndim == 2 and first.shape[0] == 1 and first.dtype.kind == "f":
            label = int(first.argmax())
    return summary, label


def complete_row(row: OutcomeRow) -> OutcomeRow:
    """Fill `prediction` and `predicted_label` from the raw `outputs` a request left behind,
    and `inputs` (rows of features) from the arrays of a request sampled for drift.

    Request threads hand over the model's output arrays as they are; summarising them (numpy
    slicing, `tolist`) happens here, on the flusher's thread, in batches, and not while the
    caller waits for its response.
    """
    if "outputs" in row:
        outputs = row.pop("outputs")
        row["prediction"], row["predicted_label"] = (
            summarise_prediction(outputs) if outputs is not None else (None, None))
    sampled = row["inputs"]
    if isinstance(sampled, tuple):  # sampled for drift: arrays in signature order
        row["inputs"] = logged_rows(sampled)
    return row


class OutcomeLog:
    def __init__(self, db: Database, spool_dir: Path, flush_seconds: float = 0.2,
                 batch_size: int = 1000, max_buffer: int = 100_000,
                 metrics: Metrics | None = None, background: bool = True,
                 forward: Callable[[list[OutcomeRow]], bool] | None = None) -> None:
        """`max_buffer` bounds the rows kept in memory (the flusher may hold one more batch);
        `background=False` runs no flusher thread: the owner calls `flush()` itself (tests that
        count exactly, one-shot tools).

        `forward` (a serving worker beside the agent, `gateway.agent`): each batch the flusher
        takes is offered to it first, as the request threads left it (summarising the rows
        is the agent's work too); only a batch it refuses (agent gone, its queue full) is
        written here. The agent reports its own buffer in the same gauges (prometheus-client's
        multiprocess mode adds them up)."""
        self._forward = forward
        self._metrics = metrics
        self._background = background
        self.last_ok_at = time.time()
        self._db = db
        self._spool = Path(spool_dir)
        self._flush_seconds = flush_seconds
        self._batch = batch_size
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.max_buffer = max_buffer
        self._buffer: deque[OutcomeRow] = deque()
        self._in_flight: list[OutcomeRow] = []  # the batch the flusher is writing now
        # held only for a few deque operations: it makes "full, so drop the oldest" exact
        self._buffer_lock = threading.Lock()
        self._started = OncePerProcess()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.forwarded = 0  # rows handed to the agent
        self.spooled = 0
        self.dropped = 0  # rows lost to the bound, oldest first
        self.spool_failures = 0  # batches the spool refused (their rows were kept in memory)
        self.spool_ok = True
        self._dropped_logged = 0
        self._drop_logged_at = 0.0
        self.last_flush_at = time.time()
        self.db_ok = True

    # -- hot path ----------------------------------------------------------------------------

    def record(self, row: OutcomeRow) -> None:
        """Buffer a row; when the buffer is full, drop the oldest one to make room (never wait:
        the caller is a request thread)."""
        self._ensure_started()
        dropped = False
        with self._buffer_lock:
            if len(self._buffer) >= self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1
                dropped = True
            self._buffer.append(row)
            full = len(self._buffer) >= self.max_buffer
        if dropped:
            if self._metrics is not None:
                self._metrics.outcomes_dropped.inc()
        elif full:
            # just filled up: flush now rather than at the next tick. While rows are being
            # dropped the flusher is failing anyway, and waking it per row would hammer the
            # database; it retries on its own tick.
            self._wake.set()

    def find_pending(self, request_id: str) -> list[OutcomeRow]:
        """Completed copies of the rows for a request id that the flusher has not taken yet
        (feedback looks here for a request answered a moment ago)."""
        queued = [complete_row(row.copy()) for row in list(self._buffer)
                  if row["request_id"] == request_id]
        # a batch being written is in neither the buffer nor the database yet
        return queued + [row for row in self._in_flight if row["request_id"] == request_id]

    def depth(self) -> int:
        return len(self._buffer)

    # -- flusher -----------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._background or not self._started.claim():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outcome-flush", daemon=True)
        self._thread.start()

    def start(self) -> None:
        self._ensure_started()

    def _take(self) -> list[OutcomeRow]:
        # popped under the lock (a full buffer's record() pops too), summarised outside it
        # (by the agent, when there is one that takes them)
        while True:
            with self._buffer_lock:
                raw = [self._buffer.popleft()
                       for _ in range(min(self._batch, len(self._buffer)))]
            if not raw or self._forward is None or not self._forward(raw):
                return [complete_row(row) for row in raw]
            self.forwarded += len(raw)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the flusher must outlive any one bad batch or file
                log.exception("outcome flush failed; retrying")
                self._stop.wait(1.0)

    def flush(self) -> None:
        """Write what is buffered; spool it when the database is down; replay old spools.

        Serialised, so a caller (shutdown, a test) that flushes while the flusher thread is
        mid-batch returns only once that batch is written too.
        """
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        tried = False
        while True:
            batch = self._take()
            if not batch:
                break
            tried = True
            self._in_flight = batch
            try:
                written = self._write(batch)
            finally:
                self._in_flight = []
            if not written:
                break  # kept in memory: neither the database nor the spool took it; next tick
        if self.db_ok or not tried:
            # with no new rows to try the database with, replaying is what notices its return;
            # otherwise a spool written during an outage waited for the next request
            self._replay_spool()
        self._log_drops()
        self.last_flush_at = time.time()
        if self.db_ok:
            self.last_ok_at = self.last_flush_at
        self.report_gauges()

    def report_gauges(self) -> None:
        if self._metrics is None:
            return
        # beside an agent, this log writes only the rows the agent refused: no rows, no lag
        behind = self._forward is None or bool(self._buffer) or not self.db_ok
        self._metrics.queue_depth.set(len(self._buffer))
        self._metrics.flush_lag.set(max(0.0, time.time() - self.last_ok_at) if behind else 0.0)
        self._metrics.spool_files.set(self.spool_files())

    def _write(self, batch: list[OutcomeRow]) -> bool:
        """Insert the batch, else spool it; False when neither worked and it was kept."""
        try:
            insert_outcomes(self._db, batch)
            self.written += len(batch)
            if not self.db_ok:
                log.info("outcome database reachable again")
            self.db_ok = True
            self.spool_ok = True  # unknown again: the next outage reports a failing spool anew
            return True
        except SQLAlchemyError as exc:
            if self.db_ok:
                log.warning("outcome database unreachable; spooling to %s: %s", self._spool,
                            exc.__class__.__name__)
            self.db_ok = False
            return self._spool_batch(batch)

    def _spool_batch(self, batch: list[OutcomeRow]) -> bool:
        """Write the batch as one complete spool file, or leave no file at all and keep the
        rows in memory (returns False)."""
        name = f"{os.getpid()}-{time.time_ns()}.jsonl"
        tmp = self._spool / f".{name}.tmp"
        try:
            self._spool.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                for row in batch:
                    handle.write(orjson.dumps(row, default=_jsonable) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._spool / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a half-written file must not stay behind, even as a dot-file
            self.spool_failures += 1
            if self._metrics is not None:
                self._metrics.spool_failures.inc()
            if self.spool_ok:
                log.error("cannot spool outcomes to %s (%s) while the database is unreachable; "
                          "keeping them in memory, at most %d rows (GATEWAY_OUTCOME_BUFFER), "
                          "oldest dropped first", self._spool,
                          exc.strerror or exc.__class__.__name__, self.max_buffer)
            self.spool_ok = False
            self._keep(batch)
            return False
        if not self.spool_ok:
            log.info("outcome spool %s writable again", self._spool)
        self.spool_ok = True
        self.spooled += len(batch)
        return True

    def _keep(self, batch: list[OutcomeRow]) -> None:
        """Put a batch that found no home back in front (its rows are the oldest), then drop
        the oldest rows beyond the bound."""
        with self._buffer_lock:
            self._buffer.extendleft(reversed(batch))
            excess = max(0, len(self._buffer) - self.max_buffer)
            for _ in range(excess):
                self._buffer.popleft()
            self.dropped += excess
        if excess and self._metrics is not None:
            self._metrics.outcomes_dropped.inc(excess)

    def _log_drops(self, force: bool = False) -> None:
        """One log line for the rows dropped since the last one, at most every 10 s (request
        threads only count; logging is done here, off the request path)."""
        new = self.dropped - self._dropped_logged
        if new <= 0:
            return
        now_s = time.monotonic()
        if not force and self._dropped_logged and now_s - self._drop_logged_at < 10.0:
            return
        log.error("dropped %d outcomes (%d since start), oldest first: the buffer of %d rows "
                  "(GATEWAY_OUTCOME_BUFFER) was full while neither the database nor the spool "
                  "took them", new, self.dropped, self.max_buffer)
        self._dropped_logged = self.dropped
        self._drop_logged_at = now_s

    def _replay_spool(self) -> None:
        if not self._spool.exists():
            return
        for path in self._spool_queue():
            claimed = path.with_name(f".claimed-{os.getpid()}-{path.name}")
            try:
                os.replace(path, claimed)  # atomic: exactly one process claims a file
            except FileNotFoundError:
                continue
            try:
                rows = [_from_json(orjson.loads(line)) for line in
                        claimed.read_bytes().splitlines() if line.strip()]
                for start in range(0, len(rows), self._batch):
                    insert_outcomes(self._db, rows[start:start + self._batch])
                claimed.unlink()
                self.written += len(rows)
                if not self.db_ok:
                    log.info("outcome database reachable again; replaying the spool")
                    self.db_ok = True
            except SQLAlchemyError:
                os.replace(claimed, path)  # give it back for a later attempt
                self.db_ok = False
                return
        self._reclaim_orphans()

    def _reclaim_orphans(self) -> None:
        """Files claimed by a process that died before finishing go back to the queue."""
        for path in self._spool.glob(".claimed-*"):
            owner = path.name.split("-")[1]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, path.with_name(path.name.split("-", 2)[2]))

    def _spool_queue(self) -> list[Path]:
        """Spooled batches waiting for the database; dot-files are claimed or half-written
        (pathlib's glob matches dot-files, so they must be excluded by name)."""
        if not self._spool.exists():
            return []
        return sorted(p for p in self._spool.glob("*.jsonl") if not p.name.startswith("."))

    def spool_files(self) -> int:
        return len(self._spool_queue())

    def close(self) -> None:
        """Stop the flusher and write (or spool) everything still buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()
        with self._flush_lock:
            self._log_drops(force=True)
        if self._buffer:
            log.error("stopping with %d outcomes neither written nor spooled; they are lost",
                      len(self._buffer))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError


def _from_json(row: dict[str, Any]) -> OutcomeRow:
    """A spooled row back as the flusher wrote it (older spools may lack newer keys: every
    column is read with `get` on insert)."""
    if isinstance(row.get("ts"), str):
        row["ts"] = datetime.fromisoformat(row["ts"])
    return cast(OutcomeRow, row)


def now() -> datetime:
    return datetime.now(UTC)

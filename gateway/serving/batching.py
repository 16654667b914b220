"""Micro-batching: concurrent requests for one onnxruntime session merged into one run.

"Natural" (leader/follower) batching, like Triton's dynamic batcher with no queue delay:

- A request that finds the session idle runs at once, alone (unless `max_wait_us` says to wait,
  below). With one caller the only cost is a lock taken twice: nothing waits.
- Requests that arrive while a run is in flight queue up. When the run ends, the oldest queued
  request becomes the leader. It takes every queued request it can merge with (same input
  names, dtypes and non-batch dimensions, same requested outputs), up to `max_batch` rows,
  concatenates them along axis 0, runs them in one `session.run` and hands each caller its own
  rows. Batches therefore grow with the load by themselves; no request waits for a timer.
- `max_wait_us` lets a leader wait up to that long for more requests, but only while more are
  known to be on their way: fewer callers are inside the batcher than recently were at once,
  and they arrive faster than the wait (the smoothed gap between arrivals is shorter). So a
  quiet model never pays it, nor a busy one whose callers are all in the batch already.
- A merged run that fails is retried request by request, so one bad input cannot fail its
  neighbours and each caller gets its own answer or its own error.

Only sessions for which `merge_refusal` finds nothing should be batched: every input and output
must have a free first dimension that really is the batch dimension, which it checks by running
one row, another row, and both together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.serving.codecs.tensors import TensorSpec
from registry.errors import GatewayError

log = logging.getLogger(__name__)

GAP_SMOOTHING = 0.2  # weight of the newest gap between arrivals in their moving average
PEAK_DECAY = 0.05  # how fast the remembered peak of callers at once forgets (per arrival)
PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BatchSettings:
    """A model's micro-batching settings: rows per merged run, and the longest a leader may
    wait for more requests (microseconds; 0 never waits)."""

    max_batch: int
    max_wait_us: int = 0

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> BatchSettings | None:
        if not record:
            return None
        return cls(int(record["max_batch"]), int(record.get("max_wait_us", 0)))

    def record(self) -> dict[str, int]:
        return {"max_batch": self.max_batch, "max_wait_us": self.max_wait_us}


Outputs = dict[str, np.ndarray]


def run_alone(session: Any, inputs: dict[str, np.ndarray], names: Sequence[str]) -> Outputs:
    values = session.run(list(names), inputs)
    return dict(zip(names, values, strict=True))


def merge_key(inputs: dict[str, np.ndarray], names: tuple[str, ...]
              ) -> tuple[tuple[Any, ...] | None, int]:
    """What two requests must share to be merged, and the request's rows; the key is None for
    a request that can only run alone (no rows, a scalar input, inputs of unequal rows)."""
    rows = -1
    parts = []
    for name in sorted(inputs):
        array = inputs[name]
        if not isinstance(array, np.ndarray) or array.ndim == 0:
            return None, 0
        if rows < 0:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None, 0
        parts.append((name, array.dtype.str, array.shape[1:]))
    if rows <= 0:
        return None, 0
    return (names, tuple(parts)), rows


@dataclass(eq=False)
class _Request:
    inputs: dict[str, np.ndarray]
    names: tuple[str, ...]
    key: tuple[Any, ...] | None
    rows: int
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    result: Outputs | None = None
    error: BaseException | None = None


class Unsplittable(Exception):
    """A merged run's output does not have one row per input row."""


class Batcher:
    """Merges concurrent `run` calls on one session; safe for any number of threads."""

    def __init__(self, session: Any, settings: BatchSettings,
                 on_run: Callable[[int], None] | None = None) -> None:
        self.session = session
        self.settings = settings
        self._all_outputs = tuple(o.name for o in session.get_outputs())
        self._on_run = on_run
        self._max_wait_s = settings.max_wait_us / 1e6
        self._lock = threading.Lock()
        self._arrival = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._busy = False
        self._leader_waiting = False
        self._last_arrival: float | None = None
        self._gap = float("inf")
        self._inside = 0  # callers whose run has not finished
        self._peak = 0.0  # recent peak of `_inside`, decaying
        self.merging = True  # cleared for good if a merged output cannot be split by rows

    @property
    def queued(self) -> int:
        """Requests waiting for the run in flight to end."""
        return len(self._queue)

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None) -> Outputs:
        names = tuple(outputs) if outputs else self._all_outputs
        request: _Request | None = None
        with self._lock:
            self._note_arrival()
            if self._busy or self._worth_waiting(1):
                key, rows = merge_key(inputs, names)
                request = _Request(inputs, names, key, rows)
                if self._busy:
                    self._queue.append(request)
                else:  # idle, but others are on their way: lead a batch that waits for them
                    self._busy = request.leads = True
                    request.wake.set()
            else:
                self._busy = True
        if request is None:  # the session was idle and nobody else is coming: run at once
            try:
                values = run_alone(self.session, inputs, names)
            finally:
                self._hand_over(1)
            self._observe(1)
            return values
        request.wake.wait()
        if request.leads:
            self._lead(request)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _observe(self, requests: int) -> None:
        if self._on_run is not None:
            self._on_run(requests)

    # -- under the lock ----------------------------------------------------------------------

    def _note_arrival(self) -> None:
        now = time.perf_counter()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap = gap if self._gap == float("inf") else (
                self._gap + GAP_SMOOTHING * (gap - self._gap))
        self._last_arrival = now
        self._inside += 1
        self._peak = max(float(self._inside), self._peak - PEAK_DECAY)
        if self._leader_waiting:
            self._arrival.notify()

    def _gather(self, batch: list[_Request], rows: int) -> int:
        """Move the queued requests that merge with the leader's into `batch`."""
        key, limit = batch[0].key, self.settings.max_batch
        kept: deque[_Request] = deque()
        for queued in self._queue:
            if queued.key == key and rows + queued.rows <= limit:
                batch.append(queued)
                rows += queued.rows
            else:
                kept.append(queued)
        self._queue = kept
        return rows

    # -- leading a batch ---------------------------------------------------------------------

    def _hand_over(self, finished: int) -> None:
        """The session is free: the oldest queued request leads the next run, or it idles."""
        with self._lock:
            self._inside -= finished
            if self._queue:
                leader = self._queue.popleft()
                leader.leads = True
                leader.wake.set()
            else:
                self._busy = False

    def _lead(self, leader: _Request) -> None:
        batch, rows = self._form_batch(leader)
        names = leader.names
        try:
            try:
                feed = leader.inputs if len(batch) == 1 else {
                    name: np.concatenate([r.inputs[name] for r in batch]) for name in leader.inputs}
                values = self.session.run(list(names), feed)
            finally:
                self._hand_over(len(batch))  # the next leader may gather and run
            if len(batch) == 1:
                leader.result = dict(zip(names, values, strict=True))
            else:
                parts = split_rows(values, [r.rows for r in batch], rows)
                for request, part in zip(batch, parts, strict=True):
                    request.result = dict(zip(names, part, strict=True))
            self._observe(len(batch))
        except Exception as exc:
            if len(batch) == 1:
                leader.error = exc
            else:
                if isinstance(exc, Unsplittable):
                    self.merging = False
                    log.warning("micro-batching turned off for a session: %s", exc)
                for request in batch:  # each caller gets its own answer or its own error
                    self._settle_alone(request)
        finally:
            for follower in batch[1:]:
                if follower.result is None and follower.error is None:
                    follower.error = RuntimeError("the merged run was abandoned")
                follower.wake.set()

    def _form_batch(self, leader: _Request) -> tuple[list[_Request], int]:
        """The leader's request and the queued ones that merge with it, up to `max_batch`
        rows; waits up to `max_wait_us` for more while more are on their way."""
        batch, rows = [leader], leader.rows
        with self._lock:
            if leader.key is None or not self.merging:
                return batch, rows
            rows = self._gather(batch, rows)
            if self._worth_waiting(rows):
                deadline = time.perf_counter() + self._max_wait_s
                self._leader_waiting = True
                try:
                    while self._worth_waiting(rows):
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0 or not self._arrival.wait(remaining):
                            self._peak = float(self._inside)  # they did not come: forget them
                            break
                        rows = self._gather(batch, rows)
                finally:
                    self._leader_waiting = False
        return batch, rows

    def _worth_waiting(self, rows: int) -> bool:
        """More requests are on their way: callers arrive faster than the wait, and fewer are
        inside than recently were at once."""
        return (self._max_wait_s > 0 and rows < self.settings.max_batch
                and self._gap < self._max_wait_s and self._inside < self._peak)

    def _settle_alone(self, request: _Request) -> None:
        try:
            request.result = run_alone(self.session, request.inputs, request.names)
        except Exception as exc:
            request.error = exc
        else:
            self._observe(1)


def split_rows(values: Sequence[Any], counts: Sequence[int], rows: int) -> list[list[Any]]:
    """Cut each output of a merged run back into one slice per request, in request order."""
    offsets = np.cumsum(counts)[:-1]
    per_output = []
    for value in values:
        if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != rows:
            shape = getattr(value, "shape", type(value).__name__)
            raise Unsplittable(f"an output of {rows} merged rows came back as {shape}")
        per_output.append(np.split(value, offsets))
    return [list(parts) for parts in zip(*per_output, strict=True)]


# -- which sessions may be batched -----------------------------------------------------------

def _probe_row(spec: TensorSpec, fill: int) -> np.ndarray:
    return np.full([1] + [d if d > 0 else 1 for d in spec.shape[1:]], fill, dtype=spec.dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE,
                                equal_nan=True))
    return bool(np.array_equal(a, b))


def merge_refusal(session: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
                  ) -> str | None:
    """Why requests to this session must not be merged, or None when they may be.

    From the signature: every input needs a free first dimension, and no output may have a
    fixed one. Then a probe: one row of zeros, one row of ones and both together must give
    outputs with one row per input row, each row the same as when it ran alone (an output
    that does not grow with the batch, or rows that see each other, refuse batching)."""
    for spec in inputs:
        if not spec.shape or spec.shape[0] > 0:
            return f"input {spec.name!r} has no free first (batch) dimension"
    for spec in outputs:
        if spec.shape and spec.shape[0] > 0:
            return f"output {spec.name!r} has a fixed first dimension ({spec.shape[0]})"
    names = [spec.name for spec in outputs]
    try:
        rows = [{spec.name: _probe_row(spec, fill) for spec in inputs} for fill in (0, 1)]
        alone = [session.run(names, row) for row in rows]
        both = session.run(names, {name: np.concatenate([rows[0][name], rows[1][name]])
                                   for name in rows[0]})
    except GatewayError as exc:
        return exc.message
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        return f"a probe run of one and two rows failed: {first}"
    for name, first, second, merged in zip(names, alone[0], alone[1], both, strict=True):
        if not all(isinstance(v, np.ndarray) and v.ndim > 0 for v in (first, second, merged)):
            return f"output {name!r} is not a tensor with a batch dimension"
        if merged.shape[0] != 2 or first.shape[0] != 1 or second.shape[0] != 1:
            return (f"output {name!r} does not grow with the batch "
                    f"({list(first.shape)} for one row, {list(merged.shape)} for two)")
        if not (_same(merged[:1], first) and _same(merged[1:], second)):
            return f"output {name!r} of one row depends on the other rows of the batch"
    return None

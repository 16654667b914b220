"""Shadow copies: run after the caller has its answer, in a bounded pool at low OS priority.

Under `gateway serve` a worker runs none itself: it hands each copy (`ShadowCopy`) to the agent
process (`gateway.agent`), whose pool runs it, so shadow inference never takes a serving
worker's GIL. A worker without an agent (tests, a bare `gunicorn wsgi:app`), or a copy too large
for the channel, uses a pool in the worker itself.

A copy that finds the queue full is dropped and counted, never queued without bound. Pool
threads lower their own scheduling priority (Linux applies `setpriority` to a thread id), and
onnxruntime runs a session with one intra-op thread on the calling thread, so shadow inference
only uses CPU time that request handling leaves idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.per_process import OncePerProcess

log = logging.getLogger(__name__)

SHADOW_NICE = 19


@dataclass(frozen=True)
class ShadowCopy:
    """One request's inputs, to be run on `version` of `model` and logged as its shadow row."""

    model: str
    version: int
    request_id: str
    revision: int | None
    fingerprint: str
    inputs: dict[str, np.ndarray]


class ShadowPool:
    def __init__(self, workers: int, queue_size: int) -> None:
        self._workers = workers
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._started = OncePerProcess()
        self.submitted = 0
        self.dropped = 0
        self.completed = 0
        self.failed = 0

    def _ensure_started(self) -> None:
        if not self._started.claim():
            return
        self._threads = [threading.Thread(target=self._run, name=f"shadow-{i}", daemon=True)
                         for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue `job` if there is room; False (and counted) when the copy is dropped."""
        self._ensure_started()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        self.submitted += 1
        return True

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
                self.completed += 1
            except Exception:
                self.failed += 1
                log.exception("shadow job failed")

    def depth(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
        for thread in self._threads:
            thread.join(timeout)

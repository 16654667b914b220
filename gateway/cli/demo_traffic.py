"""The demo's simulated application: what a real client of the gateway would send.

It sends the held-out digits to `/predict` at a modest, bounded rate (`GATEWAY_DEMO_RATE`),
a share of them with an `X-Routing-Key` (a user id, as an application with sticky sessions
would), and posts the true label to `/feedback` a few seconds after each answer with a
`feedback` token; a share of answers is never labelled, as in life. It only ever talks to the
demo's own gateway on loopback, and runs as a daemon thread of `gateway demo`, so it stops with
it: nothing is left behind.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests

log = logging.getLogger(__name__)

KEYED_SHARE = 0.3  # requests that carry a routing key
LABELLED_SHARE = 0.8  # answers whose true label is posted later
FEEDBACK_DELAY_S = (2.0, 5.0)
USERS = 200


@dataclass
class TrafficCounts:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    labelled: int = 0
    by_version: dict[int, int] = field(default_factory=dict)


class SimulatedApplication:
    def __init__(self, port: int, app_token: str, feedback_token: str, X: np.ndarray,
                 y: np.ndarray, rate: float, model: str, seed: int = 0) -> None:
        self.base = f"http://127.0.0.1:{port}"  # loopback only, whatever the bind address
        self.rate = rate
        self.model = model
        self.counts = TrafficCounts()
        self._X, self._y = X, y
        self._app = {"Authorization": f"Bearer {app_token}"}
        self._feedback = {"Authorization": f"Bearer {feedback_token}"}
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _wait_until_ready(self, session: requests.Session) -> bool:
        while not self._stop.is_set():
            try:
                if session.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            self._stop.wait(0.5)
        return False

    def _run(self) -> None:
        session = requests.Session()
        if not self._wait_until_ready(session):
            return
        pending: list[tuple[float, str, int]] = []  # (due, request id, true label)
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, request_id, label = heapq.heappop(pending)
                self._label(session, request_id, label)
            if now < due:
                self._stop.wait(min(due - now, pending[0][0] - now if pending else due - now))
                continue
            due += interval
            if due < now - 1:  # fell behind (a slow answer): do not burst to catch up
                due = now + interval
            index = self._random.randrange(len(self._X))
            answer = self._predict(session, index)
            if answer is not None and self._random.random() < LABELLED_SHARE:
                delay = self._random.uniform(*FEEDBACK_DELAY_S)
                heapq.heappush(pending, (time.monotonic() + delay, answer,
                                         int(self._y[index])))
        session.close()

    def _predict(self, session: requests.Session, index: int) -> str | None:
        headers = dict(self._app)
        if self._random.random() < KEYED_SHARE:
            headers["X-Routing-Key"] = f"user-{self._random.randrange(USERS)}"
        self.counts.sent += 1
        try:
            response = session.post(f"{self.base}/predict", headers=headers, timeout=10,
                                    json={"model": self.model,
                                          "inputs": [self._X[index].tolist()]})
        except requests.RequestException as exc:
            self.counts.failed += 1
            log.debug("demo traffic: %s", exc)
            return None
        if response.status_code != 200:
            self.counts.failed += 1
            return None
        body = response.json()
        self.counts.answered += 1
        version = int(body.get("version", 0))
        self.counts.by_version[version] = self.counts.by_version.get(version, 0) + 1
        return str(body["request_id"])

    def _label(self, session: requests.Session, request_id: str, label: int) -> None:
        try:
            response = session.post(f"{self.base}/feedback", headers=self._feedback, timeout=10,
                                    json={"request_id": request_id, "label": label})
        except requests.RequestException:
            return
        if response.status_code in (200, 201, 202):
            self.counts.labelled += 1

"""Ground truth joined to outcomes by request id, including ids whose outcome is still queued.

An outcome reaches the database up to one flush interval after its response, so feedback for
an id the database does not know yet waits (up to `feedback_wait_seconds`) for it to land
before answering 404. Feedback is stored in its own table and joined at query time, so it never
depends on the order in which the two arrive.
"""

from __future__ import annotations

import math
import time
from typing import Any

from gateway.outcomes.log import OutcomeLog
from gateway.prometheus_metrics import Metrics
from gateway.serving.dataplane import REQUEST_ID
from registry.db import Database
from registry.errors import GatewayError, InvalidInput, NotFound
from registry.names import check_model_name
from registry.outcomes import primary_prediction, record_feedback, served_models

MAX_BATCH = 1000
ITEM_KEYS = {"request_id", "label", "reward", "model"}


def parse_item(item: Any) -> tuple[str, int | None, float | None, str | None]:
    if not isinstance(item, dict):
        raise InvalidInput("a feedback item must be an object with request_id and label/reward")
    unknown = set(item) - ITEM_KEYS
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}; send request_id, label, reward")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidInput("request_id must be a string matching [A-Za-z0-9_.:-]{1,128}")
    label = item.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                              or abs(label) >= 2**63):
        raise InvalidInput("label must be an integer class label")
    reward = item.get("reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, int | float)
                               or not math.isfinite(reward)):
        raise InvalidInput("reward must be a finite number")
    if label is None and reward is None:
        raise InvalidInput("send a label, a reward, or both")
    model = item.get("model")
    if model is not None:
        check_model_name(model)
    return request_id, label, None if reward is None else float(reward), model


class FeedbackDesk:
    def __init__(self, db: Database, outcomes: OutcomeLog, wait_seconds: float,
                 metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._db = db
        self._outcomes = outcomes
        self._wait = wait_seconds

    def _models(self, request_id: str, wait: bool, caller: str | None) -> list[str]:
        deadline = time.monotonic() + (self._wait if wait else 0)
        while True:
            models = set(served_models(self._db, request_id, caller))
            models |= {r["model"] for r in self._outcomes.find_pending(request_id)
                       if r["kind"] == "primary" and caller in (None, r.get("caller"))}
            if models or time.monotonic() >= deadline:
                return sorted(models)
            time.sleep(0.05)

    def submit(self, item: Any, wait: bool = True, caller: str | None = None) -> bool:
        """Record one feedback item; True when new, False when a repeat of the same.

        `caller` set (an `app` token's key id): only requests that token made can be labelled;
        any other id answers 404 exactly as an id never served, so ids cannot be probed. None:
        any request (a `feedback` or `ops` token, or auth off)."""
        request_id, label, reward, model = parse_item(item)
        models = self._models(request_id, wait, caller)
        if model is not None:
            models = [m for m in models if m == model]
        if not models:
            raise NotFound(f"request id {request_id!r} was never served"
                           + (f" by model {model!r}" if model else ""))
        if len(models) > 1:
            raise InvalidInput(f"request id {request_id!r} was served by models {models}; "
                               "name one in 'model'")
        created = record_feedback(self._db, models[0], request_id, label, reward)
        if created and label is not None and self._metrics is not None:
            self._count_label(models[0], request_id, label)
        return created

    def _count_label(self, model: str, request_id: str, label: int) -> None:
        found = primary_prediction(self._db, model, request_id)
        if found is None:
            found = next(((r["version"], r["predicted_label"])
                          for r in self._outcomes.find_pending(request_id)
                          if r["model"] == model and r["kind"] == "primary"), None)
        if found is not None and found[1] is not None and self._metrics is not None:
            self._metrics.feedback_labels.labels(model, str(found[0]),
                                                 str(found[1] == label).lower()).inc()

    def submit_batch(self, items: Any, caller: str | None = None) -> list[dict[str, Any]]:
        if not isinstance(items, list) or not items:
            raise InvalidInput("items must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise InvalidInput(f"at most {MAX_BATCH} items per batch, got {len(items)}")
        results: list[dict[str, Any]] = []
        waited = False
        for item in items:
            request_id = item.get("request_id") if isinstance(item, dict) else None
            # echoed only when it is a string: a malformed id's result says why, not what
            entry: dict[str, Any] = {"request_id": request_id if isinstance(request_id, str)
                                     else None}
            try:
                self.submit(item, wait=not waited, caller=caller)
                entry["status"] = 202
            except NotFound as exc:
                waited = True  # one wait for the whole batch, not one per unknown id
                entry.update(status=404, error={"code": exc.code, "message": exc.message})
            except GatewayError as exc:
                entry.update(status=exc.status, error={"code": exc.code, "message": exc.message})
            results.append(entry)
        return results

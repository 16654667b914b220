"""Drift scores per model and version, computed from the database and reused for a while.

`/metrics`, `/analytics/models/{name}/drift` and the dashboard all ask for the same numbers;
computing one means reading up to `drift_window` sampled rows per version, so a worker keeps
each model's result for `drift_refresh_seconds` and computes it under a lock: a burst of
scrapes (several Prometheus servers, a dashboard left open) costs one computation, not one
each. Failures are not cached, so the next request tries the database again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from gateway.lifecycle.drift import MIN_SAMPLES, DriftScore, check_reference, score_rows
from registry.db import Database
from registry.drift import (
    StoredReference,
    latest_references,
    models_with_references,
    sampled_inputs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionDrift:
    version: int
    status: str  # ok | too_few_samples | invalid_reference
    samples: int
    reference: StoredReference
    score: DriftScore | None = None
    problem: str | None = None


@dataclass(frozen=True)
class ModelDrift:
    model: str
    computed_at: datetime
    versions: dict[int, VersionDrift]  # only versions with a reference


class DriftMonitor:
    def __init__(self, db: Database, threshold: float, window: int, refresh_seconds: float,
                 min_samples: int = MIN_SAMPLES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.threshold = threshold
        self.window = window
        self.min_samples = min_samples
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ModelDrift]] = {}
        self._models: tuple[float, list[str]] | None = None

    def model(self, name: str) -> ModelDrift:
        """The model's drift, at most `refresh_seconds` old. Raises SQLAlchemyError."""
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and self._clock() - cached[0] < self._refresh:
                return cached[1]
            result = self._compute(name)
            self._cache[name] = (self._clock(), result)
            return result

    def all_models(self) -> list[ModelDrift]:
        """Every model that has a reference for some version (what `/metrics` exports)."""
        with self._lock:
            if self._models is None or self._clock() - self._models[0] >= self._refresh:
                self._models = (self._clock(), models_with_references(self.db))
            names = self._models[1]
        return [self.model(name) for name in names]

    def _compute(self, name: str) -> ModelDrift:
        versions = {number: self._version(name, stored)
                    for number, stored in sorted(latest_references(self.db, name).items())}
        return ModelDrift(model=name, computed_at=datetime.now(UTC), versions=versions)

    def _version(self, name: str, stored: StoredReference) -> VersionDrift:
        try:
            check_reference(stored.reference)
        except ValueError as exc:
            return VersionDrift(stored.version, "invalid_reference", 0, stored, problem=str(exc))
        rows = sampled_inputs(self.db, name, stored.version, self.window,
                              stored.reference["features"])
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows),
                                                            stored.reference["features"])
        score = score_rows(stored.reference, matrix, self.min_samples)
        if score is None:
            return VersionDrift(stored.version, "too_few_samples", len(rows), stored)
        return VersionDrift(stored.version, "ok", score.samples, stored, score)

    def gauges(self) -> list[tuple[str, int, float | None, int]]:
        """(model, version, score or None, samples) per version with a reference, for the
        scrape-time collector; an unreachable database is logged and yields nothing."""
        try:
            models = self.all_models()
        except SQLAlchemyError as exc:
            log.warning("drift scores skipped in /metrics: database error: %s",
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return []
        return [(m.model, v.version, v.score.score if v.score else None, v.samples)
                for m in models for v in m.versions.values()]

    def describe(self, name: str, versions: list[int]) -> dict[str, Any]:
        """The JSON of `/analytics/models/{name}/drift`, one entry per registered version."""
        result = self.model(name)
        out = []
        for number in versions:
            drift = result.versions.get(number)
            out.append(self._entry(number, drift))
        return {"model": name, "threshold": self.threshold, "min_samples": self.min_samples,
                "window": self.window, "computed_at": result.computed_at.isoformat(),
                "versions": out}

    def _entry(self, number: int, drift: VersionDrift | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "version": number, "status": "no_reference" if drift is None else drift.status,
            "score": None, "threshold": self.threshold, "drifted": None,
            "samples": 0 if drift is None else drift.samples, "reference": None,
            "top_features": []}
        if drift is None:
            return entry
        stored = drift.reference
        entry["reference"] = {"evaluation_id": stored.evaluation_id,
                              "dataset_sha256": stored.dataset_sha256,
                              "dataset_name": stored.dataset_name, "rows": stored.rows,
                              "created_at": stored.created_at.isoformat()}
        if drift.problem:
            entry["problem"] = drift.problem
        if drift.score is not None:
            entry["score"] = drift.score.score
            entry["drifted"] = drift.score.score > self.threshold
            entry["top_features"] = [{"feature": j, "psi": value}
                                     for j, value in drift.score.top]
        return entry

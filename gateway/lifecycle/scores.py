"""Classification metrics of predictions against labels, in numpy.

The runtime must not depend on scikit-learn (a dev-only dependency), so the few metrics the gate
needs are computed here; the tests check them against `sklearn.metrics` on the same arrays.
Conventions follow sklearn's where they matter: classes are the union of labels and predictions,
a class never predicted has precision 0 (`zero_division=0`), and probabilities are clipped away
from 0 before the log so that one confident mistake gives a large, finite loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

PROBABILITY_FLOOR = 1e-15


def classification_metrics(labels: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64],
                           probabilities: np.ndarray | None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/support and (with probabilities) log loss."""
    accuracy = float(np.mean(predicted == labels))
    per_class: dict[str, dict[str, float | int]] = {}
    for cls in np.union1d(labels, predicted):
        truth = labels == cls
        guess = predicted == cls
        hits = int(np.sum(truth & guess))
        per_class[str(int(cls))] = {
            "precision": hits / int(guess.sum()) if guess.any() else 0.0,
            "recall": hits / int(truth.sum()) if truth.any() else 0.0,
            "support": int(truth.sum()),
        }
    return {"accuracy": accuracy, "per_class": per_class,
            "log_loss": None if probabilities is None else log_loss(labels, probabilities)}


def log_loss(labels: npt.NDArray[np.int64], probabilities: np.ndarray) -> float | None:
    """Mean negative log probability of the true class, reading column j as class j; None when
    a label has no column (the model's classes are not 0..C-1, so the columns cannot be read)."""
    columns = probabilities.shape[1]
    if labels.min() < 0 or labels.max() >= columns:
        return None
    chosen = probabilities[np.arange(labels.shape[0]), labels].astype(np.float64)
    return float(-np.mean(np.log(np.clip(chosen, PROBABILITY_FLOOR, 1.0))))


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds (numpy's linear interpolation, as `np.percentile`)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p99_ms": float(np.percentile(ms, 99))}

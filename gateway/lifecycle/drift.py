"""Input drift: reference statistics per feature from a version's evaluation dataset, live
statistics from the inputs sampled into the outcome log, and a PSI score between them.

Pure numpy, no I/O: `reference_stats` runs where an evaluation is stored, `score_rows` where a
drift score is asked for (`gateway.lifecycle.drift_monitor`), `logged_rows` on the outcome
flusher's thread. All three share one layout of a request's inputs as rows of features
(`feature_matrix`), so that the reference and the live side count the same things.

Binning. Per feature the cut points are the unique deciles of the reference column (the 0 %
and 100 % quantiles, min and max, included), plus one cut just below the minimum. Bins are
right-closed, `(-inf, below_min], (below_min, c0], (c0, c1], ..., (ck, +inf)`: the first and
the last bin are empty in the reference by construction, so a value that leaves the reference
range in either direction lands in a bin the reference says is (almost) impossible. That is
what makes a constant feature (digits has pixels that are always 0) detect a shift, where plain
deciles would give it a single bin and a PSI of 0 whatever arrives. Discrete features
(pixels 0..16) simply get fewer bins, since equal deciles collapse.

Everything is binned in float32, the dtype the models take: cut points are float32 values
stored exactly in JSON, and live values are cast back to float32 before binning, so a live
value equal to a cut point falls on the same side as the reference's own values did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

METHOD = "psi-deciles-v1"
MAX_FEATURES = 1024  # reference kept for the first 1024 features only: bounded JSON per version
QUANTILES = np.linspace(0.0, 1.0, 11)  # deciles, min and max included
FLOOR = 1e-4  # proportions below this count as this: an empty bin costs ln(p / 1e-4), not inf
MIN_SAMPLES = 500  # live rows needed before a score is reported (sampling noise, see score_rows)
MAX_ROWS_PER_REQUEST = 32  # rows of one request that are kept in the outcome log
TOP_FEATURES = 5


def feature_matrix(arrays: Sequence[np.ndarray], max_rows: int | None = None
                   ) -> np.ndarray | None:
    """A request's inputs as float32 rows of features: each input flattened per row
    (`[batch, ...] -> [batch, -1]`), several inputs concatenated in signature order.

    None when the inputs have no common row count (nothing sensible to call a row) or are not
    numeric: such requests are not sampled. An input of rank 0 or 1 is one row.
    """
    parts = []
    for array in arrays:
        value = np.asarray(array)
        if value.dtype.kind not in "biuf":
            return None
        parts.append(value.reshape(value.shape[0], -1) if value.ndim >= 2
                     else value.reshape(1, -1))
    if not parts or len({part.shape[0] for part in parts}) != 1:
        return None
    if max_rows is not None:
        parts = [part[:max_rows] for part in parts]
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return np.ascontiguousarray(matrix, dtype=np.float32)


def logged_rows(arrays: Sequence[np.ndarray]) -> list[list[float]] | None:
    """The `inputs` value of a sampled outcome row: at most MAX_ROWS_PER_REQUEST rows.

    Serialised through orjson's float32 printing (shortest repr that reads back as the same
    float32), so `0.1` is stored as `0.1`, not as `0.10000000149011612`.
    """
    matrix = feature_matrix(arrays, MAX_ROWS_PER_REQUEST)
    if matrix is None:
        return None
    rows: list[list[float]] = orjson.loads(
        orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY))
    return rows


def bin_index(cuts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each value for right-closed bins: 0 for x <= cuts[0], i for
    cuts[i-1] < x <= cuts[i], len(cuts) for x > cuts[-1]."""
    return np.searchsorted(cuts, values, side="left")


def bin_proportions(cuts: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(bin_index(cuts, values), minlength=len(cuts) + 1)
    return counts / max(1, len(values))


def reference_stats(features: np.ndarray) -> dict[str, Any]:
    """Per-feature reference bins of a [rows, features] float matrix (stored with an evaluation).

    JSON-serialisable and bounded: at most MAX_FEATURES features are kept (`features` says how
    many the matrix had, `kept` how many have bins; live rows must have `features` values).
    Raises ValueError for a matrix that is not 2-D, empty, or not finite: such a dataset says
    nothing reliable about the inputs a version should expect.
    """
    matrix = np.asarray(features)
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ValueError(f"reference features must be a non-empty [rows, features] matrix, "
                         f"got shape {list(matrix.shape)}")
    if matrix.dtype.kind not in "biuf":
        raise ValueError(f"reference features must be numeric, got dtype {matrix.dtype}")
    matrix = matrix.astype(np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError("reference features must be finite (no NaN or infinity)")
    kept = min(matrix.shape[1], MAX_FEATURES)
    cuts_out: list[list[float]] = []
    expected_out: list[list[float]] = []
    for j in range(kept):
        column = matrix[:, j]
        cuts = reference_cuts(column)
        cuts_out.append([float(c) for c in cuts])
        expected_out.append([float(p) for p in bin_proportions(cuts, column)])
    return {"method": METHOD, "rows": int(matrix.shape[0]), "features": int(matrix.shape[1]),
            "kept": kept, "cuts": cuts_out, "expected": expected_out}


def reference_cuts(column: np.ndarray) -> np.ndarray:
    """Unique float32 deciles of a column, with one extra cut just below its minimum."""
    deciles = np.unique(np.quantile(column.astype(np.float64), QUANTILES).astype(np.float32))
    below = np.nextafter(deciles[0], np.float32(-np.inf), dtype=np.float32)
    return np.concatenate([np.asarray([below], dtype=np.float32), deciles])


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = FLOOR) -> float:
    """Population stability index, sum over bins of (a - e) * ln(a / e), proportions floored."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftScore:
    score: float  # the largest per-feature PSI
    samples: int  # live rows the score rests on
    top: tuple[tuple[int, float], ...]  # (feature index, PSI), largest first


def check_reference(reference: Any) -> None:
    """ValueError unless `reference` has the shape reference_stats writes (it is read back
    from the database, where anything could have been stored)."""
    if not isinstance(reference, dict) or reference.get("method") != METHOD:
        raise ValueError(f"not a {METHOD} reference")
    cuts, expected, kept = reference.get("cuts"), reference.get("expected"), reference.get("kept")
    if not (isinstance(cuts, list) and isinstance(expected, list) and isinstance(kept, int)
            and len(cuts) == len(expected) == kept >= 1
            and isinstance(reference.get("features"), int) and reference["features"] >= kept):
        raise ValueError("reference has inconsistent cuts, expected proportions or counts")
    for c, e in zip(cuts, expected, strict=True):
        if not (isinstance(c, list) and isinstance(e, list) and len(e) == len(c) + 1 >= 2):
            raise ValueError("reference bins do not match their cut points")


def score_rows(reference: dict[str, Any], rows: np.ndarray,
               min_samples: int = MIN_SAMPLES) -> DriftScore | None:
    """Max-over-features PSI of live rows against a reference; None below `min_samples` rows.

    Why the maximum: drift that matters is often in a few features (a sensor, a preprocessing
    step), and a mean over 64 features dilutes one feature's PSI of 2 into 0.03. The price is
    that the maximum of many noisy PSIs is larger than any one of them, which is why scoring
    waits for enough rows. Sampling noise: with n live rows, N reference rows and b occupied
    bins, a same-distribution PSI is about (b - 1) * (1/n + 1/N) per feature (it is a
    chi-square statistic in disguise). Measured on digits (reference: the 450-row test split;
    live: bootstrap draws of the training split, 100 draws each; `python -m
    bench.drift_noise`), the maximum over 64 features was 0.13 at most with n = 500 (95th
    percentile 0.12) but 0.22 with n = 300 and 0.29 with n = 200: hence 500 rows before a
    score, not 200.
    """
    check_reference(reference)
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < max(1, min_samples):
        return None
    if matrix.shape[1] != reference["features"]:
        raise ValueError(f"live rows have {matrix.shape[1]} features, the reference "
                         f"{reference['features']}")
    scores = []
    for j in range(reference["kept"]):
        cuts = np.asarray(reference["cuts"][j], dtype=np.float32)
        scores.append(psi(np.asarray(reference["expected"][j]),
                          bin_proportions(cuts, matrix[:, j])))
    order = np.argsort(scores, kind="stable")[::-1][:TOP_FEATURES]
    top = tuple((int(j), scores[j]) for j in order)
    return DriftScore(score=top[0][1], samples=int(matrix.shape[0]), top=top)

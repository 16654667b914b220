"""Input drift: reference statistics per feature from a version's evaluation dataset, live
statistics from the inputs sampled into the outcome log, and a PSI score between them."""

from __future__ import annotations

from typing import Any

import numpy as np


def reference_stats(features: np.ndarray) -> dict[str, Any]:
    """Per-feature reference bins of a [rows, features] float matrix (stored with an evaluation)."""
    raise NotImplementedError

"""The dashboard's input drift table: per version, its PSI against the threshold.

Kept apart from `gateway.web.dashboard.routes` so the page gains a section without that module
knowing how drift is computed. A database error shows as a line in the section instead of
failing the whole page: drift is one panel among many.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.lifecycle.drift_monitor import DriftMonitor

log = logging.getLogger(__name__)

STATUS_TEXT = {
    "too_few_samples": "too few sampled rows yet",
    "invalid_reference": "the stored reference cannot be read",
}


def drift_view(name: str, monitor: DriftMonitor) -> dict[str, Any]:
    """Rows for `dashboard_drift.html`; versions without a reference are left out."""
    view: dict[str, Any] = {"threshold": f"{monitor.threshold:g}",
                            "min_samples": monitor.min_samples, "rows": [], "error": None}
    try:
        result = monitor.model(name)
    except SQLAlchemyError as exc:
        log.warning("dashboard: drift of %s unavailable: %s", name, type(exc).__name__)
        view["error"] = "drift scores are unavailable: the database did not answer"
        return view
    view["computed_at"] = result.computed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    for number, drift in result.versions.items():
        score = drift.score
        view["rows"].append({
            "version": number,
            "score": f"{score.score:.3f}" if score else "—",
            "drifted": bool(score and score.score > monitor.threshold),
            "samples": drift.samples,
            "status": STATUS_TEXT.get(drift.status, ""),
            "top": [f"#{j} {value:.3f}" for j, value in score.top] if score else [],
            "reference": f"{drift.reference.dataset_name} ({drift.reference.rows} rows)",
        })
    return view

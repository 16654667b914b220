"""The dashboard's rollout panel: the model's current (or last) rollout and its decisions.

Apart from `gateway.web.dashboard.routes` for the same reason as the drift panel: the page gains a
section without knowing how rollouts decide, and a database error shows as a line in the
panel instead of failing the page.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from registry import rollouts as rollouts_sql
from registry.db import Database

log = logging.getLogger(__name__)


def _numbers(detail: dict[str, Any]) -> str:
    """The figures a decision was taken on, in one line for people."""
    parts = []
    diff = detail.get("difference")
    if diff:
        parts.append(f"{detail.get('metric', 'metric')} difference {diff['estimate']:+.4f} "
                     f"[{diff['lower']:+.4f}, {diff['upper']:+.4f}]")
    if "step_samples" in detail:
        parts.append(f"{detail['step_samples']}/{detail.get('min_samples')} samples at step")
    candidate = detail.get("candidate")
    if isinstance(candidate, dict) and candidate.get("requests") is not None:
        parts.append(f"candidate {candidate['requests']} requests, {candidate['errors']} errors"
                     + (f", p99 {candidate['p99_ms']:.1f} ms" if candidate.get("p99_ms")
                        else ""))
    return "; ".join(parts)


def rollout_view(db: Database, name: str) -> dict[str, Any] | None:
    """Rows for `dashboard_rollouts.html`; None when the model never had a rollout."""
    try:
        current = rollouts_sql.current(db, name)
        if current is None:
            return None
        decisions = rollouts_sql.decisions(db, name, current["id"], limit=50)
    except SQLAlchemyError as exc:
        log.warning("dashboard: rollout of %s unavailable: %s", name, type(exc).__name__)
        return {"error": "the rollout is unavailable: the database did not answer"}
    last = current.get("last_decision") or {}
    return {
        "error": None, "id": current["id"], "state": current["state"],
        "candidate": current["candidate"], "baseline": current["baseline"],
        "weight": current["weight"], "steps": current["steps"],
        "step": current["step_index"] + 1, "params": current["params"],
        "last": {"action": last.get("action"), "reason": last.get("reason"),
                 "numbers": _numbers(last), "ts": last.get("ts")},
        "decisions": [{"ts": d["ts"], "action": d["action"].removeprefix("rollout."),
                       "actor": d["actor"],
                       "reason": (d["detail"] or {}).get("reason") or d["reason"] or "",
                       "numbers": _numbers(d["detail"] or {})} for d in reversed(decisions)],
    }

"""Outcome rows as the data plane records them, and what reached a database: for the tests of
the outcome buffer and of the spool on a full disk."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from gateway.outcomes.log import now
from registry.db import Database
from registry.tables import Outcome


def outcome(i: int) -> dict[str, Any]:
    """A primary outcome row as the data plane records it (raw outputs, summarised later)."""
    return {"request_id": f"r-{i:05d}", "model": "digits", "version": 1, "kind": "primary",
            "reason": "default", "revision": None, "ts": now(), "latency_ms": 1.5,
            "model_ms": 0.5, "status": 200, "error_code": None,
            "outputs": {"label": np.array([i % 10])}, "input_sha256": "0" * 64, "inputs": None}


def logged_ids(url: str) -> list[str]:
    database = Database(url)
    try:
        with database.read() as session:
            return sorted(session.scalars(select(Outcome.request_id)))
    finally:
        database.dispose()

"""Evaluations of versions and each model's evaluation gate, in SQL; every change audited.

Versions are immutable, so what is learnt about one later (its metrics on a labelled dataset)
is kept beside it, one row per run, never folded into the version record. The gate's rules are
validated and normalised by `gateway.lifecycle.gate` before they reach `set_gate`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import Database
from registry.service import _model_or_404, _version_or_404, audit, iso, set_model_setting
from registry.tables import Evaluation, Model

SUMMARY_METRICS = ("accuracy", "log_loss", "latency_p50_ms", "latency_p99_ms")


def evaluation_record(row: Evaluation, model: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": model,
        "version": row.version,
        "dataset": {"name": row.dataset_name, "sha256": row.dataset_sha256, "rows": row.rows},
        "metrics": row.metrics,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
    }


def add_evaluation(
    db: Database,
    name: str,
    ref: str | int,
    dataset: dict[str, Any],
    metrics: dict[str, Any],
    reference: dict[str, Any] | None,
    actor: str,
) -> dict[str, Any]:
    """Record one run; `dataset` is `{"name", "sha256", "rows"}`."""
    with db.session() as session:
        model = _model_or_404(session, name)
        version = _version_or_404(session, model, ref)
        row = Evaluation(
            model_id=model.id, version=version.version, dataset_sha256=dataset["sha256"],
            dataset_name=dataset["name"], rows=dataset["rows"], metrics=metrics,
            reference=reference, created_by=actor,
        )
        session.add(row)
        session.flush()
        summary = {key: metrics.get(key) for key in SUMMARY_METRICS}
        audit(session, actor, "version.evaluate", model=name, version=version.version,
              detail={"evaluation": row.id, "dataset": dict(dataset), **summary})
        return evaluation_record(row, name)


def latest_in(session: Session, model: Model, version: int,
              dataset_sha256: str | None = None) -> Evaluation | None:
    """The newest evaluation of `version` (on that dataset, if given), within `session`."""
    query = select(Evaluation).where(Evaluation.model_id == model.id,
                                     Evaluation.version == version)
    if dataset_sha256 is not None:
        query = query.where(Evaluation.dataset_sha256 == dataset_sha256)
    return session.scalar(query.order_by(Evaluation.id.desc()).limit(1))


def latest_evaluation(db: Database, name: str, ref: str | int,
                      dataset_sha256: str | None = None) -> dict[str, Any] | None:
    with db.read() as session:
        model = _model_or_404(session, name)
        version = _version_or_404(session, model, ref)
        row = latest_in(session, model, version.version, dataset_sha256)
        return evaluation_record(row, name) if row else None


def list_evaluations(db: Database, name: str, ref: str | int) -> list[dict[str, Any]]:
    """A version's evaluations, newest first."""
    with db.read() as session:
        model = _model_or_404(session, name)
        version = _version_or_404(session, model, ref)
        rows = session.scalars(
            select(Evaluation)
            .where(Evaluation.model_id == model.id, Evaluation.version == version.version)
            .order_by(Evaluation.id.desc())
        )
        return [evaluation_record(r, name) for r in rows]


def get_gate(db: Database, name: str) -> list[str] | None:
    with db.read() as session:
        gate = _model_or_404(session, name).gate
        return list(gate) if gate else None


def set_gate(db: Database, name: str, rules: list[str] | None, actor: str,
             reason: str | None) -> list[str] | None:
    """Replace the model's gate (None or [] removes it); the audit entry keeps from and to."""
    value = list(rules) if rules else None
    set_model_setting(db, name, "gate", value, actor, reason)
    return value

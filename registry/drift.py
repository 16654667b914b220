"""The two reads input drift needs: a version's latest reference, and its newest sampled inputs.

References come from `evaluations.reference` (written with an evaluation, by
`gateway.lifecycle.drift.reference_stats`); live inputs from `outcomes.inputs`, which the data
plane fills for a sampled share of successful primary requests. Neither read is on the hot
path: they run when drift is scraped or asked for, and their results are cached by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, select

from registry.db import Database
from registry.tables import Evaluation, Model, Outcome

PAGE = 128  # outcome rows per query while collecting the newest sampled inputs


@dataclass(frozen=True)
class StoredReference:
    evaluation_id: int
    version: int
    dataset_sha256: str
    dataset_name: str
    rows: int
    created_at: datetime
    reference: dict[str, Any]


def _has_reference() -> Any:
    # SQLAlchemy's JSON stores a Python None set on purpose as the JSON text 'null', not as
    # SQL NULL; both mean "no reference". (PostgreSQL's json type has no `=`: compare text.)
    return Evaluation.reference.is_not(None) & (cast(Evaluation.reference, String) != "null")


def models_with_references(db: Database) -> list[str]:
    with db.read() as session:
        return list(session.scalars(
            select(Model.name).join(Evaluation, Evaluation.model_id == Model.id)
            .where(_has_reference()).distinct().order_by(Model.name)))


def latest_references(db: Database, model: str) -> dict[int, StoredReference]:
    """Per version of `model`, its newest evaluation that carries a reference."""
    newest = (
        select(func.max(Evaluation.id))
        .join(Model, Model.id == Evaluation.model_id)
        .where(Model.name == model, _has_reference())
        .group_by(Evaluation.version)
    )
    with db.read() as session:
        rows = session.scalars(select(Evaluation).where(Evaluation.id.in_(newest))).all()
        return {
            row.version: StoredReference(
                evaluation_id=row.id, version=row.version, dataset_sha256=row.dataset_sha256,
                dataset_name=row.dataset_name, rows=row.rows, created_at=row.created_at,
                reference=row.reference or {})
            for row in rows
        }


def sampled_inputs(db: Database, model: str, version: int, max_rows: int,
                   width: int) -> list[list[float]]:
    """The newest sampled input rows of a version, newest request first, at most `max_rows`.

    Read a page of outcomes at a time, so that memory stays at about `max_rows` rows however
    many rows each request carried. Rows whose width is not `width` (inputs logged for another
    signature) are skipped.
    """
    rows: list[list[float]] = []
    query = (
        select(Outcome.inputs)
        .where(Outcome.model == model, Outcome.version == version, Outcome.kind == "primary",
               Outcome.inputs.is_not(None))
        .order_by(Outcome.ts.desc(), Outcome.id.desc())
    )
    offset = 0
    while len(rows) < max_rows:
        with db.read() as session:
            page = list(session.scalars(query.offset(offset).limit(PAGE)))
        for logged in page:
            if not isinstance(logged, list):
                continue
            rows.extend(r for r in logged if isinstance(r, list) and len(r) == width)
        if len(page) < PAGE:
            break
        offset += PAGE
    return rows[:max_rows]

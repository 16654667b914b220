"""Traffic policy revisions in SQL: the durable history that Redis's live copy is rebuilt from.

Appending a revision locks the model row (PostgreSQL) or the database (SQLite's BEGIN
IMMEDIATE), so `If-Match` is checked against the true newest revision and two writers can never
both create revision N.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import Database
from registry.errors import Conflict, UnknownModel
from registry.names import check_model_name
from registry.records import PolicyAction, PolicyRecord
from registry.service import audit, iso
from registry.tables import Model, TrafficRevision


def policy_dict(model: str, row: TrafficRevision) -> PolicyRecord:
    return {
        "model": model,
        "revision": row.revision,
        "weights": {str(k): int(v) for k, v in row.weights.items()},
        "shadow": {str(k): v for k, v in row.shadow.items()},
        "updated_at": iso(row.updated_at),
        "updated_by": row.updated_by,
        "reason": row.reason,
        "action": cast(PolicyAction, row.action),  # written only by append_revision
    }


def _model(session: Session, name: str, lock: bool = False) -> Model:
    check_model_name(name)
    query = select(Model).where(Model.name == name)
    if lock:
        query = query.with_for_update()
    model = session.scalar(query)
    if model is None:
        raise UnknownModel(f"model {name!r} is not registered")
    return model


def _newest(session: Session, model: Model, offset: int = 0) -> TrafficRevision | None:
    return session.scalar(
        select(TrafficRevision)
        .where(TrafficRevision.model_id == model.id)
        .order_by(TrafficRevision.revision.desc())
        .offset(offset)
        .limit(1)
    )


def live_policy(db: Database, name: str) -> PolicyRecord | None:
    with db.read() as session:
        row = _newest(session, _model(session, name))
        return policy_dict(name, row) if row else None


def all_live_policies(db: Database) -> list[PolicyRecord]:
    with db.read() as session:
        out = []
        for model in session.scalars(select(Model).order_by(Model.name)):
            row = _newest(session, model)
            if row is not None:
                out.append(policy_dict(model.name, row))
        return out


def history(db: Database, name: str, limit: int = 100) -> list[PolicyRecord]:
    with db.read() as session:
        model = _model(session, name)
        rows = session.scalars(
            select(TrafficRevision)
            .where(TrafficRevision.model_id == model.id)
            .order_by(TrafficRevision.revision.desc())
            .limit(limit)
        )
        return [policy_dict(name, r) for r in rows]


def append_revision(
    db: Database,
    name: str,
    weights: dict[str, int],
    shadow: dict[str, float],
    actor: str,
    reason: str | None,
    if_match: int | None,
    action: PolicyAction = "set",
    gate_override: dict[str, Any] | None = None,
) -> PolicyRecord:
    """Append the next revision; `gate_override` (the gate failures a forced change overrode) is
    audited in the same transaction, so there is never an override without its revision."""
    with db.session() as session:
        model = _model(session, name, lock=True)
        current = _newest(session, model)
        current_revision = current.revision if current else 0
        if if_match is not None and if_match != current_revision:
            raise Conflict(
                f"the policy of {name!r} is at revision {current_revision}, not {if_match}; "
                "re-read it and retry"
            )
        row = TrafficRevision(
            model_id=model.id, revision=current_revision + 1, weights=weights, shadow=shadow,
            updated_by=actor, reason=reason, action=action,
        )
        session.add(row)
        session.flush()
        audit(session, actor, f"traffic.{action}", model=name, reason=reason,
              detail={"revision": row.revision, "weights": weights, "shadow": shadow,
                      "previous_revision": current_revision})
        if gate_override is not None:
            audit(session, actor, "traffic.gate_override", model=name, reason=reason,
                  detail={"revision": row.revision, **gate_override})
        return policy_dict(name, row)


def rollback_target(db: Database, name: str) -> tuple[PolicyRecord, int]:
    """The revision before the live one (what a rollback restores) and the live revision."""
    with db.read() as session:
        model = _model(session, name)
        previous = _newest(session, model, offset=1)
        if previous is None:
            raise Conflict(f"model {name!r} has no earlier traffic revision to roll back to")
        return policy_dict(name, previous), previous.revision + 1


def versions_with_traffic(db: Database, name: str) -> set[int]:
    """Versions the live policy gives weight or shadow: these may not be archived."""
    policy = live_policy(db, name)
    if policy is None:
        return set()
    used = {int(v) for v, w in policy["weights"].items() if w > 0}
    used |= {int(v) for v, p in policy["shadow"].items() if p > 0}
    return used

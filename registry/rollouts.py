"""Progressive rollouts in SQL: one active rollout per model, changed only by compare-and-set.

The controller and ops (pause, abort) may act on the same rollout at the same moment from
different processes. Every change therefore locks the model row (PostgreSQL) or the database
(SQLite's BEGIN IMMEDIATE) and applies only if the rollout is still in the state and step the
caller read; otherwise it is a `Conflict` and the caller re-reads.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import Database
from registry.errors import Conflict, NotFound
from registry.records import RolloutRecord, RolloutState
from registry.service import audit, iso
from registry.tables import AuditEntry, Model, Rollout, utcnow
from registry.traffic import _model

ACTIVE = ("running", "paused")
FINISHED = ("completed", "rolled_back", "aborted")


def record(name: str, row: Rollout) -> RolloutRecord:
    steps = [int(s) for s in row.steps]
    return {
        "id": row.id,
        "model": name,
        "candidate": row.candidate,
        "baseline": row.baseline,
        "state": cast(RolloutState, row.state),
        "steps": steps,
        "step_index": row.step_index,
        "weight": steps[row.step_index],
        "params": row.params,
        "previous_policy": row.previous_policy,
        "revision": row.revision,
        "started_at": cast(str, iso(row.started_at)),  # NOT NULL columns
        "step_started_at": cast(str, iso(row.step_started_at)),
        "updated_at": iso(row.updated_at),
        "finished_at": iso(row.finished_at),
        "created_by": row.created_by,
        "reason": row.reason,
        "last_decision": row.last_decision,
    }


def _active(session: Session, model: Model) -> Rollout | None:
    return session.scalar(
        select(Rollout).where(Rollout.model_id == model.id, Rollout.state.in_(ACTIVE))
        .order_by(Rollout.id.desc()).limit(1))


def create(db: Database, name: str, candidate: int, baseline: int, steps: list[int],
           params: dict[str, Any], previous_policy: dict[str, Any], actor: str,
           reason: str | None) -> RolloutRecord:
    """A new running rollout at its first step; refused while another one is active."""
    with db.session() as session:
        model = _model(session, name, lock=True)
        current = _active(session, model)
        if current is not None:
            raise Conflict(f"model {name!r} already has a {current.state} rollout (id "
                           f"{current.id}, candidate {current.candidate}); abort it first")
        now = utcnow()
        row = Rollout(model_id=model.id, candidate=candidate, baseline=baseline, state="running",
                      steps=steps, step_index=0, params=params, previous_policy=previous_policy,
                      started_at=now, step_started_at=now, updated_at=now, created_by=actor,
                      reason=reason)
        session.add(row)
        session.flush()
        return record(name, row)


def discard(db: Database, rollout_id: int) -> None:
    """Remove a rollout whose first traffic change was refused: it never started."""
    with db.session() as session:
        row = session.get(Rollout, rollout_id)
        if row is not None and row.revision is None:
            session.delete(row)


def current(db: Database, name: str) -> RolloutRecord | None:
    """The active rollout, else the newest finished one, else None."""
    with db.read() as session:
        model = _model(session, name)
        row = _active(session, model) or session.scalar(
            select(Rollout).where(Rollout.model_id == model.id)
            .order_by(Rollout.id.desc()).limit(1))
        return record(name, row) if row is not None else None


def running_models(db: Database) -> list[str]:
    with db.read() as session:
        return list(session.scalars(
            select(Model.name).join(Rollout, Rollout.model_id == Model.id)
            .where(Rollout.state == "running").order_by(Model.name).distinct()))


def update(db: Database, name: str, rollout_id: int, expect_state: str, expect_step: int,
           actor: str, action: str | None, changes: dict[str, Any],
           detail: dict[str, Any] | None = None, reason: str | None = None
           ) -> RolloutRecord:
    """Apply `changes` if the rollout is still `expect_state` at `expect_step`; audit `action`
    (None: record without an audit entry, for repeated holds)."""
    with db.session() as session:
        model = _model(session, name, lock=True)
        row = session.get(Rollout, rollout_id)
        if row is None or row.model_id != model.id:
            raise NotFound(f"model {name!r} has no rollout {rollout_id}")
        if row.state != expect_state or row.step_index != expect_step:
            raise Conflict(f"rollout {rollout_id} of {name!r} is {row.state} at step "
                           f"{row.step_index + 1} now, not {expect_state} at step "
                           f"{expect_step + 1}; re-read it")
        for key, value in changes.items():
            setattr(row, key, value)
        row.updated_at = utcnow()
        if action is not None:
            audit(session, actor, action, model=name, version=row.candidate, reason=reason,
                  detail={"rollout": rollout_id, **(detail or {})})
        session.flush()
        return record(name, row)


def decisions(db: Database, name: str, rollout_id: int, limit: int = 200
              ) -> list[dict[str, Any]]:
    """The newest `limit` audited decisions of one rollout, oldest first. Entries since the
    rollout started are read (the audit's ts index), then kept by the id in their detail."""
    with db.read() as session:
        started = session.scalar(select(Rollout.started_at).where(Rollout.id == rollout_id))
        if started is None:
            return []
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.model == name, AuditEntry.ts >= started,
                                     AuditEntry.action.like("rollout.%"))
            .order_by(AuditEntry.id.desc()))
        out = [{"id": e.id, "ts": iso(e.ts), "actor": e.actor, "action": e.action,
                "reason": e.reason, "detail": e.detail}
               for e in rows if (e.detail or {}).get("rollout") == rollout_id]
        return list(reversed(out[:limit]))

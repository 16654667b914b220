"""Outcome rows and feedback in SQL: bulk inserts that tolerate replays, joins, aggregates.

Inserts use ON CONFLICT DO NOTHING on (model, request_id, kind, version), so a batch replayed
from the spool after a partial failure never duplicates a row: that is what makes delivery
exactly-once on top of an at-least-once buffer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, String, and_, any_, case, delete, func, literal, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from registry.db import Database
from registry.errors import Conflict, InvalidInput
from registry.records import OutcomeRow
from registry.tables import Alias, Feedback, Model, Outcome

OUTCOME_COLUMNS = tuple(c.name for c in Outcome.__table__.columns if c.name != "id")
JSON_COLUMNS = frozenset(c.name for c in Outcome.__table__.columns if isinstance(c.type, JSON))
CONFLICT = "ON CONFLICT (model, request_id, kind, version) DO NOTHING"


def _sql_type(name: str) -> str:
    return str(Outcome.__table__.c[name].type.compile(dialect=postgresql.dialect()))


# Static SQL from the table's own columns: nothing from input is ever interpolated.
_COLUMN_LIST = ", ".join(OUTCOME_COLUMNS)
SQLITE_ROWS_PER_STATEMENT = 1000  # 15,000 parameters: under SQLite's 32,766 limit
_SQLITE_ROW = "({})".format(", ".join("?" * len(OUTCOME_COLUMNS)))


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    return "INSERT INTO outcomes ({}) VALUES {} {}".format(  # noqa: S608
        _COLUMN_LIST, ", ".join([_SQLITE_ROW] * rows), CONFLICT)


POSTGRES_INSERT = "INSERT INTO outcomes ({}) SELECT * FROM unnest({}) {}".format(  # noqa: S608
    _COLUMN_LIST, ", ".join(f"%b::{_sql_type(name)}[]" for name in OUTCOME_COLUMNS), CONFLICT)


def _sqlite_ts(ts: Any) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (UTC wall time, microseconds, no zone)."""
    if ts.tzinfo is not None and ts.utcoffset():
        ts = ts.astimezone(UTC)
    return ts.replace(tzinfo=None).isoformat(" ", "microseconds")


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(
        value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def insert_outcomes(db: Database, rows: Sequence[OutcomeRow]) -> int:
    """Bulk insert that bypasses the ORM, in one statement per batch on both databases.

    Through the ORM a row cost about 70 µs, which would make the outcome log, not inference,
    the ceiling of a busy gateway. A statement per row is not enough either: sqlite3 releases
    the GIL around every step, so an executemany of 1,000 rows was 1,000 thread switches
    against the request threads of the same worker. So SQLite gets multi-row VALUES of up to
    1,000 rows, PostgreSQL one array per column (`unnest`).
    """
    if not rows:
        return 0
    if db.engine.dialect.name == "sqlite":
        ts_at = OUTCOME_COLUMNS.index("ts")
        json_at = [i for i, name in enumerate(OUTCOME_COLUMNS) if name in JSON_COLUMNS]
        flat: list[Any] = []
        for row in rows:
            values = [row.get(name) for name in OUTCOME_COLUMNS]
            values[ts_at] = _sqlite_ts(values[ts_at])
            for i in json_at:
                values[i] = _json(values[i])
            flat.extend(values)
        width = len(OUTCOME_COLUMNS)
        step = SQLITE_ROWS_PER_STATEMENT * width
        inserted = 0
        with db.session() as session:
            connection = session.connection()
            for start in range(0, len(flat), step):
                chunk = flat[start:start + step]
                result = connection.exec_driver_sql(_sqlite_insert(len(chunk) // width),
                                                    tuple(chunk))
                inserted += int(result.rowcount or 0)
        return inserted
    columns = [[row.get(name) for row in rows] for name in OUTCOME_COLUMNS]
    for i, name in enumerate(OUTCOME_COLUMNS):
        if name in JSON_COLUMNS:
            columns[i] = [_json(v) for v in columns[i]]
    with db.session() as session:
        # %b: binary parameters; the text form escapes every JSON string with a regex
        cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(POSTGRES_INSERT, columns)
            return int(cursor.rowcount or 0)
        finally:
            cursor.close()


def served_models(db: Database, request_id: str, caller: str | None = None) -> list[str]:
    """The models that served `request_id`; with `caller`, only those it was served to."""
    query = select(Outcome.model).where(Outcome.request_id == request_id,
                                        Outcome.kind == "primary")
    if caller is not None:
        query = query.where(Outcome.caller == caller)
    with db.read() as session:
        return list(session.scalars(query.distinct()))


def primary_prediction(db: Database, model: str, request_id: str
                       ) -> tuple[int, int | None] | None:
    """(version, predicted label) of the primary outcome of a request, if logged."""
    with db.read() as session:
        row = session.execute(select(Outcome.version, Outcome.predicted_label).where(
            Outcome.model == model, Outcome.request_id == request_id,
            Outcome.kind == "primary")).first()
    return (row[0], row[1]) if row else None


def record_feedback(db: Database, model: str, request_id: str, label: int | None,
                    reward: float | None) -> bool:
    """Store feedback; True when new, False when the same feedback was already there."""
    try:
        with db.session() as session:
            session.add(Feedback(model=model, request_id=request_id, label=label,
                                 reward=reward))
        return True
    except IntegrityError:
        pass
    with db.read() as session:
        existing = session.scalar(select(Feedback).where(Feedback.model == model,
                                                         Feedback.request_id == request_id))
    if existing is None:
        raise Conflict(f"feedback for {request_id!r} is being written concurrently; retry")
    same_reward = (existing.reward is None and reward is None) or (
        existing.reward is not None and reward is not None
        and math.isclose(existing.reward, reward, rel_tol=0, abs_tol=1e-12))
    if existing.label == label and same_reward:
        return False
    raise Conflict(
        f"request {request_id!r} already has different feedback (label {existing.label}, "
        f"reward {existing.reward}); feedback cannot be changed"
    )


def _window(query: Any, since: datetime | None, until: datetime | None, column: Any) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def champion_alias(db: Database, model: str) -> int | None:
    with db.read() as session:
        return session.scalar(
            select(Alias.version).join(Model, Model.id == Alias.model_id)
            .where(Model.name == model, Alias.name == "champion"))


def primary_stats(db: Database, model: str, since: datetime | None,
                  until: datetime | None) -> list[dict[str, Any]]:
    """Per version, over primary outcomes: counts, errors, feedback sums, in one aggregate."""
    correct = case((Outcome.predicted_label == Feedback.label, 1), else_=0)
    query = (
        select(
            Outcome.version,
            func.count(Outcome.id),
            func.sum(case((Outcome.status >= 500, 1), else_=0)),
            func.sum(case((and_(Outcome.status >= 400, Outcome.status < 500), 1), else_=0)),
            func.count(Feedback.id),
            func.count(case((and_(Feedback.label.is_not(None),
                                  Outcome.predicted_label.is_not(None)), 1))),
            func.sum(case((and_(Feedback.label.is_not(None),
                                Outcome.predicted_label.is_not(None)), correct), else_=0)),
            func.count(Feedback.reward),
            func.sum(Feedback.reward),
            func.sum(Feedback.reward * Feedback.reward),
        )
        .select_from(Outcome)
        .outerjoin(Feedback, and_(Feedback.model == Outcome.model,
                                  Feedback.request_id == Outcome.request_id))
        .where(Outcome.model == model, Outcome.kind == "primary")
        .group_by(Outcome.version)
        .order_by(Outcome.version)
    )
    query = _window(query, since, until, Outcome.ts)
    with db.read() as session:
        return [
            {"version": r[0], "requests": r[1], "errors": int(r[2] or 0),
             "client_errors": int(r[3] or 0), "feedback": r[4], "labelled": r[5],
             "correct": int(r[6] or 0), "rewarded": r[7], "reward_sum": float(r[8] or 0.0),
             "reward_sq": float(r[9] or 0.0)}
            for r in session.execute(query)
        ]


def latency_percentiles(db: Database, model: str, version: int, count: int,
                        since: datetime | None, until: datetime | None,
                        quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float]:
    """Nearest-rank percentiles, each read as one row at an offset of the sorted latencies."""
    out: dict[str, float] = {}
    if count <= 0:
        return out
    base = select(Outcome.latency_ms).where(
        Outcome.model == model, Outcome.kind == "primary", Outcome.version == version,
        Outcome.status < 400)
    base = _window(base, since, until, Outcome.ts)
    with db.read() as session:
        ok_count = session.scalar(select(func.count()).select_from(base.subquery())) or 0
        for q in quantiles:
            if ok_count == 0:
                break
            rank = max(1, math.ceil(q * ok_count))
            value = session.scalar(base.order_by(Outcome.latency_ms).offset(rank - 1).limit(1))
            out[f"p{round(q * 100)}"] = float(value) if value is not None else math.nan
    return out


def shadow_agreement(db: Database, model: str, since: datetime | None,
                     until: datetime | None) -> list[dict[str, Any]]:
    """Per shadow version: how often its label matched the primary's on the same request."""
    primary = aliased(Outcome)
    shadow = aliased(Outcome)
    agree = case((shadow.predicted_label == primary.predicted_label, 1), else_=0)
    query = (
        select(shadow.version, primary.version, func.count(shadow.id), func.sum(agree),
               func.sum(case((shadow.status >= 400, 1), else_=0)))
        .select_from(shadow)
        .join(primary, and_(primary.model == shadow.model,
                            primary.request_id == shadow.request_id,
                            primary.kind == "primary"))
        .where(shadow.model == model, shadow.kind == "shadow")
        .group_by(shadow.version, primary.version)
        .order_by(shadow.version, primary.version)
    )
    query = _window(query, since, until, shadow.ts)
    with db.read() as session:
        return [{"version": r[0], "primary_version": r[1], "compared": r[2],
                 "agreed": int(r[3] or 0), "errors": int(r[4] or 0)}
                for r in session.execute(query)]


EXPORT_COLUMNS = ["request_id", "model", "version", "kind", "reason", "revision", "ts",
                  "latency_ms", "model_ms", "status", "error_code", "prediction",
                  "predicted_label", "input_sha256", "label", "reward"]


EXPORT_ID_SPAN = 8  # a page query looks at ids up to this many pages ahead of the last one


def export_rows(db: Database, model: str, since: datetime | None, until: datetime | None,
                version: int | None, kind: str | None, chunk: int = 2000
                ) -> Iterator[tuple[Any, ...]]:
    """Stream outcome rows joined with feedback, `chunk` at a time: memory stays flat.

    Keyset pagination on the primary key (not a server-side cursor) so that no transaction
    stays open while a slow client reads, and SQLite writers are never blocked by an export.
    Rows logged while the export runs are included until it catches up with the log.

    Each page is two queries whose cost does not depend on the planner's statistics, because
    PostgreSQL may have none (a table younger than autovacuum's first pass, or autovacuum off):

    - the page of outcomes, with the id bounded on both sides (`last < id <= last + span`), so
      that without statistics the planner's bitmap scan and sort cover one span of ids, not
      every row of the model once per page;
    - the feedback of exactly that page's request ids, through its unique (model, request_id)
      index, joined here.

    Not one LEFT JOIN with feedback: on a never-analyzed table PostgreSQL plans that as a
    nested loop comparing every outcome of the model with every feedback row, for every page,
    slow enough to hold a sync worker past gunicorn's timeout.
    """
    span = chunk * EXPORT_ID_SPAN
    with db.read() as session:
        top = session.scalar(select(func.max(Outcome.id))) or 0
    last_id = 0
    while True:
        if last_id >= top:  # caught up with the log as it was; look once more for new rows
            with db.read() as session:
                newest = session.scalar(select(func.max(Outcome.id))) or 0
            if newest <= top:
                return
            top = newest
        upper = last_id + span
        query = (
            select(Outcome.id, Outcome.request_id, Outcome.model, Outcome.version, Outcome.kind,
                   Outcome.reason, Outcome.revision, Outcome.ts, Outcome.latency_ms,
                   Outcome.model_ms, Outcome.status, Outcome.error_code, Outcome.prediction,
                   Outcome.predicted_label, Outcome.input_sha256)
            .where(Outcome.model == model, Outcome.id > last_id, Outcome.id <= upper)
            .order_by(Outcome.id)
            .limit(chunk)
        )
        query = _window(query, since, until, Outcome.ts)
        if version is not None:
            query = query.where(Outcome.version == version)
        if kind is not None:
            query = query.where(Outcome.kind == kind)
        with db.read() as session:
            rows = session.execute(query).all()
            feedback: dict[str, tuple[Any, Any]] = {}
            if rows:
                ids = sorted({row[1] for row in rows})
                # one array parameter on PostgreSQL: an IN list of 2,000 parameters cost
                # psycopg more time to prepare (per page) than the query took to run
                wanted = (Feedback.request_id == any_(literal(ids, ARRAY(String)))
                          if db.engine.dialect.name == "postgresql"
                          else Feedback.request_id.in_(ids))
                feedback = {r[0]: (r[1], r[2]) for r in session.execute(
                    select(Feedback.request_id, Feedback.label, Feedback.reward).where(
                        Feedback.model == model, wanted))}
        for row in rows:
            yield (*row[1:], *feedback.get(row[1], (None, None)))
        if len(rows) == chunk:
            last_id = rows[-1][0]
        else:  # the span is done up to the newest id known before the query (or one returned)
            last_id = max(min(upper, top), rows[-1][0] if rows else last_id)


def prune(db: Database, before: datetime) -> tuple[int, int]:
    """Delete outcomes and feedback older than `before`; returns (outcomes, feedback) deleted."""
    with db.session() as session:
        conn = session.connection()
        outcomes = conn.execute(delete(Outcome).where(Outcome.ts < before)).rowcount
        feedback = conn.execute(delete(Feedback).where(Feedback.ts < before)).rowcount
    return int(outcomes or 0), int(feedback or 0)


def check_kind(kind: str | None) -> str | None:
    if kind not in (None, "primary", "shadow"):
        raise InvalidInput("kind must be primary or shadow")
    return kind



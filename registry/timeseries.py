"""Outcomes over time: per (time bucket, version) aggregates computed by the database.

The dashboard draws versions against each other over time. Every figure here is a SQL
aggregate (GROUP BY bucket, version), never rows loaded into Python, so a chart costs the
same for a thousand outcomes or a hundred million.

A bucket is the integer number of seconds since the epoch divided by the bucket size, computed
in SQL so that the grouping happens in the database on both SQLite and PostgreSQL. Latency
percentiles come from counts in fixed latency buckets (a histogram, like Prometheus'
`histogram_quantile`): exact nearest-rank percentiles per bucket would need a sort per group,
while counts are one pass and portable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, cast, extract, func, select
from sqlalchemy.orm import aliased

from registry.db import Database
from registry.tables import Feedback, Outcome

# Upper edges (ms) of the latency histogram; a final +Inf bucket is implied.
LATENCY_EDGES_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


@dataclass(frozen=True)
class PrimaryBucket:
    """One version's primary traffic in one time bucket (start in epoch seconds)."""

    start: int
    version: int
    requests: int
    errors: int  # status >= 500
    labelled: int  # label feedback joined to an outcome that has a predicted label
    correct: int
    rewarded: int
    reward_sum: float
    ok: int  # status < 400: the requests whose latency the histogram counts
    latency_le: tuple[int, ...]  # cumulative counts of ok requests with latency <= each edge

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.rewarded if self.rewarded else None

    def latency(self, q: float) -> float | None:
        return histogram_quantile(q, LATENCY_EDGES_MS, self.latency_le, self.ok)


@dataclass(frozen=True)
class ShadowBucket:
    """One shadow version in one time bucket: how often its label matched the primary's."""

    start: int
    version: int
    compared: int
    agreed: int
    errors: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def histogram_quantile(q: float, edges: tuple[float, ...], cumulative: tuple[int, ...],
                       total: int) -> float | None:
    """The q-quantile estimated from cumulative bucket counts, as Prometheus does it.

    Linear interpolation inside the bucket that holds rank q * total (the first bucket starts
    at 0); a rank in the +Inf bucket answers the highest finite edge, since nothing better is
    known. None when there is nothing to estimate from.
    """
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for edge, count in zip(edges, cumulative, strict=True):
        if count >= rank:
            in_bucket = count - below
            if in_bucket <= 0:
                return lower
            return lower + (edge - lower) * (rank - below) / in_bucket
        lower, below = float(edge), count
    return float(edges[-1])


def bucket_index(db: Database, column: Any, bucket_seconds: int) -> Any:
    """SQL for `epoch seconds of column // bucket_seconds`, for the database's dialect.

    SQLite keeps UTC wall-clock text ('YYYY-MM-DD HH:MM:SS.ffffff'), which strftime('%s')
    reads as UTC; its first 19 characters are taken because SQLite rounds to whole
    milliseconds, which would move 00:59:59.9995 into the next hour. PostgreSQL's EPOCH of a
    timestamptz is UTC by definition. Both divisions are integer divisions of non-negative
    integers, so they floor.
    """
    if bucket_seconds < 1:
        raise ValueError("bucket_seconds must be a positive integer")
    if db.engine.dialect.name == "sqlite":
        seconds = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
    else:
        seconds = cast(func.floor(extract("epoch", column)), BigInteger)
    return seconds // int(bucket_seconds)


def primary_series(db: Database, model: str, since: datetime, until: datetime,
                   bucket_seconds: int) -> list[PrimaryBucket]:
    """Per (bucket, version) aggregates of primary outcomes in [since, until), with feedback.

    The bucket is computed in a subquery and grouped on in the outer query: grouping by an
    expression that carries a bound parameter fails on PostgreSQL, where the SELECT's and the
    GROUP BY's copies become two different parameters.
    """
    rows = (
        select(bucket_index(db, Outcome.ts, bucket_seconds).label("bucket"),
               Outcome.version.label("version"), Outcome.status.label("status"),
               Outcome.latency_ms.label("latency_ms"),
               Outcome.predicted_label.label("predicted"), Feedback.label.label("label"),
               Feedback.reward.label("reward"))
        .select_from(Outcome)
        .outerjoin(Feedback, and_(Feedback.model == Outcome.model,
                                  Feedback.request_id == Outcome.request_id))
        .where(Outcome.model == model, Outcome.kind == "primary", Outcome.ts >= since,
               Outcome.ts < until)
        .subquery()
    )
    c = rows.c
    labelled = and_(c.label.is_not(None), c.predicted.is_not(None))
    ok = c.status < 400
    query = (
        select(
            c.bucket, c.version, func.count(),
            func.sum(case((c.status >= 500, 1), else_=0)),
            func.sum(case((labelled, 1), else_=0)),
            func.sum(case((and_(labelled, c.predicted == c.label), 1), else_=0)),
            func.count(c.reward), func.sum(c.reward),
            func.sum(case((ok, 1), else_=0)),
            *[func.sum(case((and_(ok, c.latency_ms <= edge), 1), else_=0))
              for edge in LATENCY_EDGES_MS],
        )
        .group_by(c.bucket, c.version)
        .order_by(c.bucket, c.version)
    )
    with db.read() as session:
        return [_primary_bucket(row, bucket_seconds) for row in session.execute(query)]


def _primary_bucket(row: Any, bucket_seconds: int) -> PrimaryBucket:
    return PrimaryBucket(
        start=int(row[0]) * bucket_seconds, version=int(row[1]), requests=int(row[2]),
        errors=int(row[3] or 0), labelled=int(row[4] or 0), correct=int(row[5] or 0),
        rewarded=int(row[6] or 0), reward_sum=float(row[7] or 0.0), ok=int(row[8] or 0),
        latency_le=tuple(int(v or 0) for v in row[9:]),
    )


def shadow_series(db: Database, model: str, since: datetime, until: datetime,
                  bucket_seconds: int) -> list[ShadowBucket]:
    """Per (bucket, shadow version): shadow rows joined to their request's primary row.

    Counted like `registry.outcomes.shadow_agreement` (a failed shadow is compared and does
    not agree), so the chart and the comparison table tell the same story.
    """
    shadow = aliased(Outcome)
    primary = aliased(Outcome)
    rows = (
        select(bucket_index(db, shadow.ts, bucket_seconds).label("bucket"),
               shadow.version.label("version"), shadow.status.label("status"),
               shadow.predicted_label.label("mine"), primary.predicted_label.label("theirs"))
        .select_from(shadow)
        .join(primary, and_(primary.model == shadow.model,
                            primary.request_id == shadow.request_id,
                            primary.kind == "primary"))
        .where(shadow.model == model, shadow.kind == "shadow", shadow.ts >= since,
               shadow.ts < until)
        .subquery()
    )
    c = rows.c
    query = (
        select(c.bucket, c.version, func.count(),
               func.sum(case((c.mine == c.theirs, 1), else_=0)),
               func.sum(case((c.status >= 400, 1), else_=0)))
        .group_by(c.bucket, c.version)
        .order_by(c.bucket, c.version)
    )
    with db.read() as session:
        return [ShadowBucket(start=int(r[0]) * bucket_seconds, version=int(r[1]),
                             compared=int(r[2]), agreed=int(r[3] or 0), errors=int(r[4] or 0))
                for r in session.execute(query)]

"""The outcome pipeline's sustained rate: push records straight into `OutcomeLog`, no HTTP.

Builds `gateway.outcomes.log.OutcomeLog` as `gateway.web.app` does (one per process, default flush
interval and batch size) over a fresh database, pushes `--records` rows shaped like
`DataPlane._row` (a primary digits outcome with its prediction summary) from `--threads`
threads as fast as they can go, and waits until every row is in the `outcomes` table (polled
with COUNT(*)). Reports the end-to-end rate (rows in the table per second, from the first
`record()` to the last row counted) and the caller's cost of `record()` (timed over chunks of
1,000 pre-built rows, so the timer itself is not counted).

Databases: a temporary SQLite file, and PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth,
or `GATEWAY_TEST_PG_URL`): a fresh database created for the run and dropped afterwards. The
schema comes from the migrations (`registry.migrate.upgrade`). Bounded: each database gets at
most `--max-seconds` to drain (default 50 s) and a partial result is reported as such.

    .venv/bin/python -m bench.outcome_pipeline [--records 200000 --threads 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PG_ADMIN = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CHUNK = 1000


@dataclass
class Result:
    database: str
    records: int
    threads: int
    push_s: float = float("nan")
    caller_us: float = float("nan")
    alone_us: float = float("nan")
    done_s: float = float("nan")
    rows: int = 0
    max_depth: int = 0
    spooled: int = 0
    status: str = "ok"

    @property
    def rate(self) -> float:
        return self.rows / self.done_s if self.done_s > 0 else float("nan")


def _prototype() -> dict[str, Any]:
    """The fields of a primary digits outcome that do not change from request to request."""
    from gateway.outcomes.log import summarise_prediction

    probabilities = np.random.default_rng(0).dirichlet(np.ones(10)).astype(np.float32)[None, :]
    prediction, label = summarise_prediction(
        {"label": np.array([int(probabilities.argmax())]), "probabilities": probabilities})
    return {"model": "bench", "version": 1, "kind": "primary", "reason": "sticky",
            "revision": 1, "status": 200, "error_code": None, "prediction": prediction,
            "predicted_label": label, "inputs": None}


def _rows(proto: dict[str, Any], prefix: str, start: int, count: int) -> list[dict[str, Any]]:
    from gateway.outcomes.log import now

    fingerprint = uuid.uuid4().hex * 2
    return [{**proto, "request_id": f"{prefix}-{i}", "ts": now(), "latency_ms": 0.8,
             "model_ms": 0.02, "input_sha256": fingerprint} for i in range(start, start + count)]


def count_rows(db: Any) -> int:
    from sqlalchemy import func, select

    from registry.tables import Outcome

    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Outcome)) or 0)


def measure(name: str, url: str, spool: Path, records: int, threads: int,
            max_seconds: float) -> Result:
    from gateway.outcomes.log import OutcomeLog
    from registry.db import Database
    from registry.migrate import upgrade

    upgrade(url)
    db = Database(url)
    log = OutcomeLog(db, spool)  # as gateway.web.app builds it: 0.2 s flush, batches of 1,000
    result = Result(name, records, threads)
    proto = _prototype()
    alone = _rows(proto, f"alone-{uuid.uuid4().hex[:8]}", 0, min(10_000, records // 10))
    per_thread = (records - len(alone)) // threads
    caller = [0.0] * threads
    start = threading.Barrier(threads + 1)

    def push(index: int) -> None:
        prefix = f"t{index}-{uuid.uuid4().hex[:8]}"
        start.wait()
        for chunk in range(0, per_thread, CHUNK):
            rows = _rows(proto, prefix, chunk, min(CHUNK, per_thread - chunk))
            t0 = time.perf_counter()
            for row in rows:
                log.record(row)
            caller[index] += time.perf_counter() - t0

    workers = [threading.Thread(target=push, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    t0 = time.perf_counter()
    for row in alone:  # one caller, no contention: the flusher sleeps its first 0.2 s
        log.record(row)
    result.alone_us = (time.perf_counter() - t0) / len(alone) * 1e6
    start.wait()
    try:
        total = per_thread * threads + len(alone)
        while any(w.is_alive() for w in workers):
            result.max_depth = max(result.max_depth, log.depth())
            time.sleep(0.05)
        result.push_s = time.perf_counter() - t0
        result.caller_us = sum(caller) / (per_thread * threads) * 1e6
        deadline = t0 + max_seconds
        while True:
            result.max_depth = max(result.max_depth, log.depth())
            result.rows = count_rows(db)
            if result.rows >= total:
                result.done_s = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                result.done_s = time.perf_counter() - t0
                result.status = f"INCOMPLETE: {result.rows} of {total} rows after {max_seconds} s"
                break
            time.sleep(0.25)  # COUNT(*) is not free: poll gently
        result.records = total
    finally:
        log.close()
        result.spooled = log.spooled
        db.dispose()
    if result.spooled:
        result.status += f"; {result.spooled} rows went to the spool"
    return result


@contextmanager
def pg_database(admin: str) -> Iterator[str]:
    import psycopg

    name = f"mgw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table(results: list[Result]) -> list[str]:
    lines = ["| database | records | threads | push s | record() us, 1 caller alone "
             "| record() us, N callers | all rows in table after s | end-to-end rows/s "
             "| max queue depth | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.database} | {r.records} | {r.threads} | {r.push_s:.2f} | {r.alone_us:.2f} "
              f"| {r.caller_us:.2f} | {r.done_s:.2f} | {r.rate:.0f} | {r.max_depth} "
              f"| {r.status} |" for r in results]
    lines += ["", "record() us, N callers: wall time inside record() per call with N threads "
              "pushing at once (includes waiting for the GIL held by the other callers and the "
              "flusher). End-to-end: rows counted in the table / seconds since the first "
              "record(). One OutcomeLog = one gateway worker; each worker has its own flusher."]
    return lines


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--max-seconds", type=float, default=50.0,
                        help="per database, push and drain (bounded; default 50)")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= 64 or args.records < args.threads:
        parser.error("--threads 1..64 and --records >= --threads")
    args.max_seconds = min(args.max_seconds, 55.0)  # two databases stay under two minutes
    results = []
    with tempfile.TemporaryDirectory(prefix="mgw-outcomes-") as tmp:
        for database in [d.strip() for d in args.databases.split(",") if d.strip()]:
            spool = Path(tmp) / f"spool-{database}"
            print(f"outcome pipeline: {args.records} records from {args.threads} threads into "
                  f"{database} ...", flush=True)
            if database == "sqlite":
                results.append(measure("sqlite (file, WAL)", f"sqlite:///{tmp}/outcomes.db",
                                       spool, args.records, args.threads, args.max_seconds))
            elif database == "postgresql":
                try:
                    with pg_database(PG_ADMIN) as url:
                        results.append(measure("postgresql (127.0.0.1)", url, spool,
                                               args.records, args.threads, args.max_seconds))
                except Exception as exc:  # no server: say so, do not fail the SQLite figure
                    if type(exc).__name__ != "OperationalError":
                        raise
                    results.append(Result("postgresql", args.records, args.threads,
                                          status=f"SKIPPED: {str(exc).splitlines()[0]}"))
            else:
                parser.error(f"unknown database {database!r} (sqlite, postgresql)")
    lines = table(results)
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("# Outcome pipeline\n\n" + "\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main()

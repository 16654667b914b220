"""Soak: a real `gateway serve` under bounded mixed load; asserts no 5xx, flat RSS, no lost outcome.

A benchmark measures a moment; a soak asks what a few minutes of steady, mixed traffic do to the
state a gateway accumulates (worker memory, the outcome buffer, feedback joins, policy copies,
growing tables). One invocation:

- builds the three digits models (`models.examples`: logreg, forest, mlp) and registers them
  as versions 1, 2, 3 of `digits`, in a PostgreSQL database created for the run on the shared
  server (dropped at the end), with a private key prefix on the shared Redis (deleted at the
  end);
- starts `gateway serve --workers 2` (sync workers, auth on) on a free loopback port;
- runs a mixed load for `--minutes` from a few client threads, each stopping by itself at the
  deadline: `/predict` with a varying `X-Routing-Key` (most traffic; some 8-row batches, some
  caller-chosen `X-Request-Id`s), `/feedback` with the true label of the held-out split for a
  share of the answered ids (singly and in batches), a traffic policy flip every few seconds
  (90/10 and 50/50 between versions 1 and 2, sometimes with a shadow on version 3), and every
  ~30 s an outcomes CSV export of the last minute, an all-time `/compare` and a `/metrics`
  scrape;
- samples every worker's RSS (VmRSS) every few seconds, noting the worker PIDs;
- after the load, waits a few flush intervals and checks the database against what the clients
  were told, then exports the whole outcomes table once (after 10 minutes about 445,000 rows,
  22 s on the 2-core development machine: a long streamed response) and counts its rows.

Assertions (exit status 1 naming the failed ones): no 5xx and no socket error or timeout; each
worker's RSS flat within 10% (median of the window after warm-up vs median of the last window);
exactly one primary outcome row per answered request id and none for ids never answered; every
feedback answered 202 is in the feedback table; no worker replaced; the whole-table export has
every row; every client thread stopped by itself.

    make soak                                        # 10 minutes, bench/results/soak.md
    .venv/bin/python -m bench.soak --minutes 1       # a quick check (shorter warm-up)
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import queue
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.run import Server
from tests.server import free_port

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "digits"
RSS_TOLERANCE = 0.10
FLUSH_SECONDS = 0.2  # the gateway's outcome flush interval (Settings.outcome_flush_seconds)
SETTLE_SECONDS = 1.0  # five flush intervals: one for the last batch, the rest for a busy host
LATE_RECHECK_SECONDS = 5.0  # when rows are missing, tells "late" from "lost"
REQUEST_TIMEOUT = 30.0  # the gunicorn worker timeout: a slower answer is a failure anyway
EXPORT_BOUND_S = 300.0  # a whole streamed export; its socket reads are bounded as above
EXPORT_WINDOW_S = 60.0  # the periodic exports cover the outcomes of the last minute
FEEDBACK_CLIENTS = 2  # one answers ~70 items a second (each may wait for its outcome to land)

# Policies the flipper cycles through. Versions: 1 logreg, 2 forest, 3 mlp.
POLICIES: tuple[dict[str, Any], ...] = (
    {"weights": {"1": 90, "2": 10}, "shadow": {}},
    {"weights": {"1": 50, "2": 50}, "shadow": {}},
    {"weights": {"1": 90, "2": 10}, "shadow": {"3": 100}},
    {"weights": {"1": 50, "2": 50}, "shadow": {"3": 30}},
)


# --------------------------------------------------------------------------- stores


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_database(admin_url: str) -> str:
    """A fresh database on the shared server, so the soak's counts start from zero and nothing
    another engineer runs can add rows to them. Returns its SQLAlchemy URL."""
    import psycopg

    name = f"mgw_soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_conninfo(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _conninfo(admin_url).rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_conninfo(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postmaster_started(admin_url: str) -> str:
    """When the shared PostgreSQL server last started: a change during the run means somebody
    restarted it under the soak (the machine is shared), which the report must say."""
    import psycopg

    with psycopg.connect(_conninfo(admin_url), connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    return str(row[0]) if row else "?"


def delete_redis_keys(url: str, prefix: str) -> int:
    """Remove this run's keys (policies, claimed request ids) from the shared Redis."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        deleted = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            deleted += int(client.delete(key))
        return deleted
    finally:
        client.close()


# --------------------------------------------------------------------------- HTTP


class Client:
    """One HTTP call per connection, as the sync workers answer with `Connection: close`."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, token: str | None, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT,
             sink: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """(status, body); with `sink`, the body is streamed to it in chunks and not kept.

        Raises OSError (refused, reset, timeout): the caller counts it as a failure.
        """
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            if sink is None:
                return response.status, response.read()
            while chunk := response.read(65536):
                sink(chunk)
            return response.status, b""
        except http.client.HTTPException as exc:  # a truncated answer is a socket-level failure
            raise OSError(f"{exc.__class__.__name__}: {exc}") from exc
        finally:
            conn.close()


@dataclass
class Tally:
    """Thread-safe counts and latencies per request kind, and a sample of failures."""

    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int | str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.statuses[(kind, str(status))] += 1
            self.latencies.setdefault(kind, []).append(seconds)
            bad = not isinstance(status, int) or status >= 500
            if bad and len(self.failures) < 20:
                self.failures.append(f"{kind} {status}: {detail[:300]}")

    def send(self, client: Client, kind: str, method: str, path: str, token: str | None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             sink: Callable[[bytes], None] | None = None) -> tuple[int, bytes] | None:
        """Make one call and count it; None when it failed below HTTP (the tally has it)."""
        started = time.perf_counter()
        try:
            status, answer = client.call(method, path, token, body, headers, sink=sink)
        except OSError as exc:
            self.add(kind, f"socket:{exc.__class__.__name__}", time.perf_counter() - started,
                     str(exc))
            return None
        self.add(kind, status, time.perf_counter() - started,
                 answer[:300].decode(errors="replace") if status >= 500 else "")
        return status, answer


@dataclass
class LineCounter:
    """Counts a streamed CSV body's bytes and lines without keeping it; gives up (as a socket
    failure) past `bound_s`, so that an export that never ends cannot hold the soak."""

    bound_s: float = EXPORT_BOUND_S
    size: int = 0
    lines: int = 0
    began: float = field(default_factory=time.monotonic)

    def __call__(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.lines += chunk.count(b"\n")
        if time.monotonic() - self.began > self.bound_s:
            raise TimeoutError(f"export still streaming after {self.bound_s:g} s "
                               f"({self.lines - 1} rows)")


# --------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/<pid>/task/*/children, or a /proc scan)."""
    found: set[int] = set()
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            text = (task / "children").read_text()
            found.update(int(p) for p in text.split())
        return sorted(found)
    except FileNotFoundError:
        pass
    except OSError:
        return []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Workers:
    """The gunicorn master (child of `gateway serve`) and its workers, by PID over time."""

    master: int
    initial: list[int]
    seen: list[int] = field(default_factory=list)
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)

    def sample(self, elapsed: float) -> None:
        current = children(self.master)
        if sorted(current) != sorted(self.initial) and (
                not self.changes or not self.changes[-1].endswith(str(sorted(current)))):
            self.changes.append(f"at {elapsed:.0f} s the workers were {sorted(current)}")
        for pid in current:
            if pid not in self.seen:
                self.seen.append(pid)
            kib = rss_kib(pid)
            if kib is not None:
                self.samples.setdefault(pid, []).append((elapsed, kib))


def find_workers(serve_pid: int, expected: int, timeout: float = 60) -> Workers:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        masters = children(serve_pid)
        if len(masters) == 1:
            workers = children(masters[0])
            if len(workers) == expected:
                return Workers(masters[0], workers, list(workers))
        time.sleep(0.2)
    raise RuntimeError(f"did not find one gunicorn master with {expected} workers under "
                       f"PID {serve_pid}")


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """What the clients did and were told; merged from the threads after they stop."""

    tally: Tally = field(default_factory=Tally)
    answered: dict[str, int] = field(default_factory=dict)  # request id -> served version
    feedback_accepted: set[str] = field(default_factory=set)
    feedback_status: Counter[str] = field(default_factory=Counter)  # recorded/unchanged/4xx
    feedback_items: Counter[str] = field(default_factory=Counter)  # single / batch items
    flips: list[tuple[float, int, str]] = field(default_factory=list)  # (t, revision, policy)
    exports: list[tuple[float, int, int, float]] = field(default_factory=list)  # t,rows,B,s
    compares: list[tuple[float, float, int]] = field(default_factory=list)  # t, s, versions
    metrics: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def policy_text(policy: dict[str, Any]) -> str:
    weights = "/".join(f"{w}" for w in policy["weights"].values())
    versions = "v" + "+v".join(policy["weights"])
    shadow = "".join(f" +shadow v{v} {p}%" for v, p in policy["shadow"].items())
    return f"{versions} {weights}{shadow}"


def predict_client(seed: int, client: Client, token: str, X: np.ndarray, y: np.ndarray,
                   deadline: float, load: Load,
                   feedback: queue.Queue[tuple[str, int, int | None]],
                   feedback_share: float) -> None:
    """Mostly one-row requests with a sticky key from a large key space; some batches, some
    caller-chosen request ids (each claimed in Redis, so they exercise that path too)."""
    rng = random.Random(seed)
    answered: dict[str, int] = {}
    skipped = 0
    bodies = [orjson.dumps({"model": MODEL, "inputs": {"input": X[i:i + 1]}},
                           option=orjson.OPT_SERIALIZE_NUMPY) for i in range(len(X))]
    while time.monotonic() < deadline:
        headers = {"X-Routing-Key": f"user-{rng.randrange(20_000)}"}
        if rng.random() < 0.1:
            headers["X-Request-Id"] = f"soak-{seed}-{uuid.uuid4().hex}"
        if rng.random() < 0.05:
            start = rng.randrange(len(X) - 8)
            kind, index = "predict-batch8", None
            body = orjson.dumps({"model": MODEL, "inputs": {"input": X[start:start + 8]}},
                                option=orjson.OPT_SERIALIZE_NUMPY)
        else:
            index = rng.randrange(len(X))
            kind, body = "predict", bodies[index]
        got = load.tally.send(client, kind, "POST", "/predict", token, body, headers)
        if got is None or got[0] != 200:
            continue
        answer = orjson.loads(got[1])
        answered[answer["request_id"]] = int(answer["version"])
        if index is not None and rng.random() < feedback_share:
            predicted = answer["outputs"]["label"][0]
            try:  # never wait for the feedback threads: that would throttle the predictions
                feedback.put_nowait((answer["request_id"], int(y[index]), int(predicted)))
            except queue.Full:
                skipped += 1
    with load.lock:
        load.answered.update(answered)
        load.feedback_items["skipped (queue full)"] += skipped


def feedback_client(seed: int, client: Client, token: str, deadline: float, load: Load,
                    feedback: queue.Queue[tuple[str, int, int | None]]) -> None:
    """Sends the true label for ids as soon as they are answered (so some outcomes are still
    in a worker's buffer: the wait-for-outcome path), mostly one by one, some in batches of 25,
    and now and then the same feedback twice (idempotent: 202 again)."""
    rng = random.Random(seed)
    batch: list[dict[str, Any]] = []
    accepted: set[str] = set()
    statuses: Counter[str] = Counter()
    items: Counter[str] = Counter()
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            request_id, label, predicted = feedback.get(timeout=0.2)
        except queue.Empty:
            continue
        item: dict[str, Any] = {"request_id": request_id, "label": label}
        if rng.random() < 0.5:
            item["reward"] = 1.0 if predicted == label else 0.0
        if rng.random() < 0.3:
            batch.append(item)
            if len(batch) < 25:
                continue
            body = orjson.dumps({"items": batch})
            sent, batch = batch, []
            got = load.tally.send(client, "feedback-batch", "POST", "/feedback", token, body)
            items["batch"] += len(sent)
            if got is None or got[0] != 200:
                statuses[f"batch {got[0] if got else 'failed'}"] += len(sent)
                continue
            for entry in orjson.loads(got[1])["items"]:
                statuses[str(entry["status"])] += 1
                if entry["status"] == 202:
                    accepted.add(entry["request_id"])
            continue
        if last is not None and rng.random() < 0.02:
            item = last  # the same feedback again
        body = orjson.dumps(item)
        got = load.tally.send(client, "feedback", "POST", "/feedback", token, body)
        items["single"] += 1
        if got is None:
            statuses["failed"] += 1
            continue
        if got[0] == 202:
            accepted.add(item["request_id"])
            statuses[orjson.loads(got[1])["status"]] += 1
        else:
            statuses[str(got[0])] += 1
        last = item
    with load.lock:
        load.feedback_accepted |= accepted
        load.feedback_status.update(statuses)
        load.feedback_items.update(items)


def ticks(started: float, deadline: float, every: float) -> Iterator[int]:
    """Step numbers 1, 2, ... at `started + step * every`, sleeping in between, until the
    deadline: the cadence of the periodic clients, fixed to the start so it does not drift."""
    step = 1
    while (wake := started + step * every) < deadline:
        time.sleep(max(0.0, wake - time.monotonic()))
        yield step
        step += 1


def policy_flipper(client: Client, token: str, started: float, deadline: float, load: Load,
                   every: float) -> None:
    """A new traffic revision every `every` seconds, cycling through POLICIES, so the workers
    keep swapping their policy copies (and loading/using the shadow) under load."""
    for step in ticks(started, deadline, every):
        policy = POLICIES[step % len(POLICIES)]
        body = orjson.dumps({**policy, "reason": f"soak flip {step}"})
        got = load.tally.send(client, "policy-put", "PUT", f"/admin/models/{MODEL}/traffic",
                              token, body)
        if got is not None and got[0] == 200:
            revision = int(orjson.loads(got[1])["revision"])
            with load.lock:
                load.flips.append((time.monotonic() - started, revision, policy_text(policy)))


def utc_param(at: datetime) -> str:
    """An ISO 8601 time for a query string (`Z`, not `+00:00`, whose `+` would be a space)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def export_csv(client: Client, token: str, load: Load, kind: str, since: datetime | None
               ) -> tuple[int, int, float] | None:
    """Stream one outcomes CSV, counting rows; (rows, bytes, seconds), None when it failed."""
    counted = LineCounter()
    query = "format=csv" + (f"&since={utc_param(since)}" if since else "")
    got = load.tally.send(client, kind, "GET", f"/analytics/models/{MODEL}/outcomes?{query}",
                          token, sink=counted)
    if got is None or got[0] != 200:
        return None
    return counted.lines - 1, counted.size, time.monotonic() - counted.began


def analyst(client: Client, token: str, started: float, deadline: float, load: Load,
            every: float) -> None:
    """Every `every` seconds: the outcomes CSV of the last minute (streamed, rows counted, not
    kept), the all-time comparison and a /metrics scrape.

    The periodic export is windowed, as a pipeline pulling outcomes would ask for it, so its
    cost stays level and the load stays the same mix all run long. A whole-table export every
    30 s would grow with the table (about 380,000 rows after 10 minutes, 18 s to export with
    nothing else running) until one sync worker did little else. The whole table is exported
    once, after the load (`main`).
    """
    for _ in ticks(started, deadline, every):
        since = datetime.now(UTC) - timedelta(seconds=EXPORT_WINDOW_S)
        exported = export_csv(client, token, load, "export-csv-1min", since)
        if exported is not None:
            with load.lock:
                load.exports.append((time.monotonic() - started, *exported))
        began = time.perf_counter()
        got = load.tally.send(client, "compare", "GET", f"/analytics/models/{MODEL}/compare",
                              token)
        if got is not None and got[0] == 200:
            with load.lock:
                load.compares.append((time.monotonic() - started, time.perf_counter() - began,
                                      len(orjson.loads(got[1])["versions"])))
        got = load.tally.send(client, "metrics", "GET", "/metrics", None)
        if got is not None and got[0] == 200:
            with load.lock:
                load.metrics = shadow_metrics(got[1])


def shadow_metrics(text: bytes) -> dict[str, float]:
    """Shadow copies run and dropped, summed over workers and versions."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"shadow_runs": 0.0, "shadow_dropped": 0.0}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "gateway_shadow_runs_total":
                out["shadow_runs"] += sample.value
            elif sample.name == "gateway_shadow_dropped_total":
                out["shadow_dropped"] += sample.value
    return out


def sampler(workers: Workers, started: float, deadline: float, every: float) -> None:
    while True:
        workers.sample(time.monotonic() - started)
        if time.monotonic() >= deadline:
            return
        time.sleep(every)


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Ledger:
    """The database's view after the load, compared with what the clients were told."""

    primary_rows: int
    primary_ids: int
    missing: list[str]
    extra: list[str]
    duplicated: list[str]
    error_rows: int
    shadow_rows: int
    shadow_orphans: int
    shadow_by_version: dict[int, int]
    primary_by_version: dict[int, int]
    feedback_rows: int
    feedback_missing: list[str]
    feedback_extra: list[str]
    version_mismatch: int


def read_ledger(url: str, load: Load) -> Ledger:
    import psycopg

    with psycopg.connect(_conninfo(url), connect_timeout=5) as conn:
        primary = conn.execute(
            "SELECT request_id, version, status FROM outcomes WHERE model = %s "
            "AND kind = 'primary'", (MODEL,)).fetchall()
        shadow = conn.execute(
            "SELECT request_id, version FROM outcomes WHERE model = %s AND kind = 'shadow'",
            (MODEL,)).fetchall()
        feedback = {r[0] for r in conn.execute(
            "SELECT request_id FROM feedback WHERE model = %s", (MODEL,)).fetchall()}
    counts = Counter(r[0] for r in primary)
    versions = {r[0]: r[1] for r in primary}
    answered = load.answered
    return Ledger(
        primary_rows=len(primary), primary_ids=len(counts),
        missing=sorted(set(answered) - set(counts)),
        extra=sorted(set(counts) - set(answered)),
        duplicated=sorted(rid for rid, n in counts.items() if n > 1),
        error_rows=sum(1 for r in primary if r[2] != 200),
        shadow_rows=len(shadow),
        shadow_orphans=sum(1 for r in shadow if r[0] not in counts),
        shadow_by_version=dict(sorted(Counter(r[1] for r in shadow).items())),
        primary_by_version=dict(sorted(Counter(r[1] for r in primary).items())),
        feedback_rows=len(feedback),
        feedback_missing=sorted(load.feedback_accepted - feedback),
        feedback_extra=sorted(feedback - load.feedback_accepted),
        version_mismatch=sum(1 for rid, v in answered.items()
                             if rid in versions and versions[rid] != v),
    )


@dataclass(frozen=True)
class Windows:
    """Where the RSS comparison looks: why, for short runs, in the report."""

    warmup: float
    length: float
    note: str


def rss_windows(total: float) -> Windows:
    if total >= 180:
        return Windows(60.0, 60.0, "warm-up 60 s; baseline = median RSS over 60-120 s, end = "
                                   "median over the last 60 s")
    quarter = total / 4
    return Windows(quarter, quarter, f"run shorter than 3 min: shortened warm-up of "
                                     f"{quarter:.0f} s; baseline = median over "
                                     f"{quarter:.0f}-{2 * quarter:.0f} s, end = median over "
                                     f"the last {quarter:.0f} s")


def median_in(samples: Iterable[tuple[float, int]], lo: float, hi: float) -> float | None:
    values = [kib for t, kib in samples if lo <= t < hi]
    return statistics.median(values) if values else None


def rss_rows(workers: Workers, windows: Windows, total: float
             ) -> tuple[list[str], list[Check]]:
    rows, checks = [], []
    for pid in workers.seen:
        samples = workers.samples.get(pid, [])
        if not samples:
            continue
        first = samples[0][1]
        base = median_in(samples, windows.warmup, windows.warmup + windows.length)
        end = median_in(samples, total - windows.length, total + 0.5)  # not the final export
        peak = max(kib for _, kib in samples)
        growth = (end / base - 1) if base and end else None
        rows.append(f"| {pid} | {len(samples)} | {mib(first)} | {mib(base)} | {mib(end)} | "
                    f"{mib(peak)} | {'-' if growth is None else f'{growth:+.1%}'} |")
        ok = growth is not None and abs(growth) <= RSS_TOLERANCE
        checks.append(Check(f"RSS of worker {pid} flat within {RSS_TOLERANCE:.0%}", ok,
                            f"{mib(base)} -> {mib(end)} MiB ("
                            f"{'no samples' if growth is None else f'{growth:+.1%}'})"))
    return rows, checks


def rss_by_minute(workers: Workers, total: float) -> list[str]:
    """Median RSS per worker and minute: the shape of the curve, which start/end alone hide."""
    minutes = max(1, int(-(-total // 60)))
    pids = [p for p in workers.seen if workers.samples.get(p)]
    lines = ["| minute | " + " | ".join(f"worker {p}" for p in pids) + " |",
             "| --- |" + " --- |" * len(pids)]
    for m in range(minutes):
        cells = [mib(median_in(workers.samples[p], m * 60, (m + 1) * 60)) for p in pids]
        lines.append(f"| {m + 1} | " + " | ".join(cells) + " |")
    return lines


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="load duration (default 10; e.g. 1 for a quick check)")
    parser.add_argument("--clients", type=int, default=4, help="/predict client threads")
    parser.add_argument("--feedback-share", type=float, default=0.15,
                        help="share of answered one-row ids that get feedback")
    parser.add_argument("--flip-seconds", type=float, default=5.0)
    parser.add_argument("--analytics-seconds", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.md")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (models, server log) even on success")
    args = parser.parse_args(argv)
    if not 0.25 <= args.minutes <= 120:
        parser.error("--minutes must be between 0.25 and 120")
    if not 1 <= args.clients <= 32:
        parser.error("--clients must be between 1 and 32")
    return args


def machine_lines(command: list[str], began: datetime, load_at_start: tuple[float, float]
                  ) -> list[str]:
    import gunicorn
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip() or "unknown"
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True, cwd=REPO).stdout.strip():
        commit += " with uncommitted changes"
    load1, load5 = load_at_start
    return [f"- started: {began.isoformat(timespec='seconds')}",
            f"- machine: nproc {os.cpu_count()}, {cpu}, {platform.platform()}; load average "
            f"at start {load1:.2f} (1 min), {load5:.2f} (5 min)",
            f"- python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"gunicorn {gunicorn.__version__}",
            f"- commit: {commit}",
            f"- command: `{shlex.join(['python', '-m', 'bench.soak', *command])}`"]


def log_findings(log_text: str) -> dict[str, int]:
    """What the server log says about trouble: tracebacks, errors, worker timeouts/boots."""
    return {
        "Traceback": log_text.count("Traceback (most recent call last)"),
        "[ERROR]": len(re.findall(r"\[ERROR\]", log_text)),
        "WORKER TIMEOUT": log_text.count("WORKER TIMEOUT"),
        "Booting worker": log_text.count("Booting worker"),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(args: argparse.Namespace, command: list[str], load: Load, workers: Workers,
           ledger: Ledger, late: Ledger | None, full: tuple[int, int, float] | None,
           checks: list[Check], duration: float,
           windows: Windows, rss_table: list[str], findings: dict[str, int],
           cleanup: list[str], log_path: Path | None, pg_note: str, began: datetime,
           load_at_start: tuple[float, float]) -> str:
    tally = load.tally
    kinds = sorted({k for k, _ in tally.statuses})
    total_requests = sum(tally.statuses.values())
    lines = ["# Soak: `gateway serve` under mixed load", "",
             *machine_lines(command, began, load_at_start),
             f"- duration: {duration:.1f} s of load ({args.minutes:g} min asked); "
             f"{args.clients} /predict client threads, {FEEDBACK_CLIENTS} feedback, 1 policy "
             f"flipper (every {args.flip_seconds:g} s), 1 analyst (every "
             f"{args.analytics_seconds:g} s), "
             f"RSS sampled every {args.sample_seconds:g} s",
             f"- server: `gateway serve --workers 2` (sync workers, auth on), PostgreSQL "
             f"database of its own, private Redis prefix; models `{MODEL}` v1 logreg, v2 "
             "forest, v3 mlp",
             f"- load average at the end {os.getloadavg()[0]:.2f} (1 min); {pg_note}", "",
             "## Assertions", "", "| assertion | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {'PASS' if c.ok else '**FAIL**'} | {c.detail} |" for c in checks]
    lines += ["", "## Requests", "",
              f"{total_requests} requests, {total_requests / duration:.1f} req/s overall.", "",
              "| kind | requests | req/s | p50 ms | p99 ms | max ms | statuses |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind in kinds:
        count = sum(n for (k, _), n in tally.statuses.items() if k == kind)
        lat = [s * 1000 for s in tally.latencies.get(kind, [])]
        statuses = ", ".join(f"{s}: {n}" for (k, s), n in sorted(tally.statuses.items())
                             if k == kind)
        lines.append(f"| {kind} | {count} | {count / duration:.2f} | "
                     f"{percentile(lat, 0.5):.1f} | {percentile(lat, 0.99):.1f} | "
                     f"{max(lat):.1f} | {statuses} |")
    errors = Counter({s: n for (_, s), n in tally.statuses.items() if not s.startswith("2")})
    lines += ["", "Errors by status (every answer that was not 2xx): "
              + (", ".join(f"{s}: {n}" for s, n in sorted(errors.items())) or "none") + "."]
    if tally.failures:
        lines += ["", "First failures:", ""] + [f"- `{f}`" for f in tally.failures]
    lines += ["", "## Worker memory (VmRSS, MiB)", "", windows.note + ".", "",
              f"gunicorn master PID {workers.master}; workers at start "
              f"{', '.join(map(str, workers.initial))}; "
              + ("; ".join(workers.changes) if workers.changes else "no worker replaced") + ".",
              "", "| worker PID | samples | start | after warm-up | end | peak | end vs "
              "after warm-up |", "| --- | --- | --- | --- | --- | --- | --- |", *rss_table,
              "", "Median per minute:", "", *rss_by_minute(workers, duration)]
    lines += ["", "## Outcomes", "",
              "| | count |", "| --- | --- |",
              f"| request ids answered 200 | {len(load.answered)} |",
              f"| primary rows | {ledger.primary_rows} (by version: "
              f"{', '.join(f'v{v} {n}' for v, n in ledger.primary_by_version.items())}) |",
              f"| answered ids with no primary row after {SETTLE_SECONDS:g} s | "
              f"{len(ledger.missing)} |"]
    if late is not None:
        lines.append(f"| ... still missing after {SETTLE_SECONDS + LATE_RECHECK_SECONDS:g} s "
                     f"| {len(late.missing)} |")
    lines += [f"| primary rows for ids never answered 200 | {len(ledger.extra)} |",
              f"| ids with more than one primary row | {len(ledger.duplicated)} |",
              f"| primary rows with a status other than 200 | {ledger.error_rows} |",
              f"| primary rows whose version differs from the answer's | "
              f"{ledger.version_mismatch} |",
              f"| shadow rows | {ledger.shadow_rows} (by version: "
              f"{', '.join(f'v{v} {n}' for v, n in ledger.shadow_by_version.items()) or '-'}) |",
              f"| shadow rows without a primary row | {ledger.shadow_orphans} |",
              f"| shadow copies run / dropped (queue full), last /metrics | "
              f"{load.metrics.get('shadow_runs', 0):.0f} / "
              f"{load.metrics.get('shadow_dropped', 0):.0f} |"]
    fb = load.feedback_status
    other = ", ".join(f"{s}: {n}" for s, n in sorted(fb.items())
                      if s not in ("recorded", "unchanged"))
    lines += ["", "## Feedback", "", "| | count |", "| --- | --- |",
              f"| sent singly / in batches of 25 | {load.feedback_items['single']} / "
              f"{load.feedback_items['batch']} |",
              f"| answered ids picked for feedback but skipped (queue full) | "
              f"{load.feedback_items['skipped (queue full)']} |",
              f"| answered 202 (distinct ids) | {len(load.feedback_accepted)} |",
              f"| of which recorded / unchanged (single only) | {fb['recorded']} / "
              f"{fb['unchanged']} |",
              f"| item statuses in batches and other answers | {other or '-'} |",
              f"| rows in the feedback table | {ledger.feedback_rows} |",
              f"| 202 ids missing from the table | {len(ledger.feedback_missing)} |",
              f"| table rows for ids never answered 202 | {len(ledger.feedback_extra)} |"]
    lines += ["", "## Policy flips, exports, comparisons", "",
              f"{len(load.flips)} policy revisions written"
              + (f" (revisions {load.flips[0][1]}-{load.flips[-1][1]})" if load.flips else "")
              + ", cycling: " + "; ".join(policy_text(p) for p in POLICIES) + ".", "",
              f"Every {args.analytics_seconds:g} s: the outcomes CSV of the last "
              f"{EXPORT_WINDOW_S:g} s, then the all-time `/compare`.", "",
              "| t s | CSV rows | CSV MB | export s | compare s |", "| --- | --- | --- | --- | "
              "--- |"]
    for i, (t, rows, size, secs) in enumerate(load.exports):
        cmp_s = f"{load.compares[i][1]:.2f}" if i < len(load.compares) else "-"
        lines.append(f"| {t:.0f} | {rows} | {size / 1e6:.1f} | {secs:.2f} | {cmp_s} |")
    lines += ["", "After the load, the whole table: " + (
        "failed" if full is None else
        f"{full[0]} rows, {full[1] / 1e6:.1f} MB of CSV in {full[2]:.1f} s "
        f"({full[0] / max(full[2], 1e-9):.0f} rows/s).")]
    lines += ["", "## Server log", "",
              ", ".join(f"{k}: {v}" for k, v in findings.items())
              + " (2 boots are the two workers starting)."
              + (f" Kept at `{log_path}`." if log_path else ""), "",
              "## Clean-up", "", *[f"- {c}" for c in cleanup]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = argv if argv is not None else sys.argv[1:]
    from models.examples import build_examples, load_test_split

    began = datetime.now(UTC)
    load1, load5, _ = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mgw-soak-"))
    prefix = f"mgwsoak:{uuid.uuid4().hex[:10]}:"
    print(f"soak: building the example models in {work}", flush=True)
    examples = build_examples(work / "models")
    X, y = load_test_split(work / "models")
    url = create_database(PG_ADMIN)
    pg_started = postmaster_started(PG_ADMIN)
    print(f"soak: database {url.rsplit('/', 1)[1]}, Redis prefix {prefix}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": url, "GATEWAY_REDIS_URL": REDIS_URL,
                "GATEWAY_REDIS_PREFIX": prefix, "GATEWAY_MODEL_STORE": str(work / "store"),
                "GATEWAY_STATE_DIR": str(work / "state"), "GATEWAY_AUTH": "on",
                "GATEWAY_WORKERS": "2"})
    gw_cli = [sys.executable, "-m", "gateway.cli.main"]

    def cli(*argv_: str) -> str:
        return subprocess.run(gw_cli + list(argv_), env=env, cwd=work, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    server: Server | None = None
    cleanup: list[str] = []
    failed = True
    try:
        cli("db", "upgrade")
        for example in examples:
            cli("models", "register", MODEL, str(example.path), "--metadata", orjson.dumps(
                {"description": example.description, "metrics": example.metrics}).decode())
        tokens = {role: cli("token", "create", "--role", role, "--name", f"soak-{role}")
                  .strip().splitlines()[-1] for role in ("app", "ops", "analyst")}
        cli("traffic", "set", MODEL, "1=90", "2=10", "--reason", "soak start")
        port = free_port()
        server = Server("gateway", gw_cli + ["serve", "--bind", f"127.0.0.1:{port}",
                                             "--workers", "2"], env, work, port, work)
        client = Client(port)
        server.wait_ready(lambda: client.call("GET", "/readyz", None, timeout=2)[0] == 200)
        workers = find_workers(server.proc.pid, 2)
        windows = rss_windows(args.minutes * 60)
        print(f"soak: serving on 127.0.0.1:{port}, master {workers.master}, workers "
              f"{workers.initial}; load for {args.minutes:g} min ({windows.note})", flush=True)

        load = Load()
        feedback: queue.Queue[tuple[str, int, int | None]] = queue.Queue(maxsize=10_000)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        threads = [threading.Thread(target=predict_client, name=f"predict-{i}", args=(
            i, client, tokens["app"], X, y, deadline, load, feedback, args.feedback_share))
            for i in range(args.clients)]
        threads += [threading.Thread(target=feedback_client, name=f"feedback-{i}", args=(
            1000 + i, client, tokens["app"], deadline, load, feedback))
            for i in range(FEEDBACK_CLIENTS)]
        threads += [
            threading.Thread(target=policy_flipper, name="flipper", args=(
                client, tokens["ops"], started, deadline, load, args.flip_seconds)),
            threading.Thread(target=analyst, name="analyst", args=(
                client, tokens["analyst"], started, deadline, load, args.analytics_seconds)),
            threading.Thread(target=sampler, name="rss", args=(
                workers, started, deadline, args.sample_seconds)),
        ]
        for thread in threads:
            thread.daemon = True  # bounded by the deadline; daemon only so ^C cannot hang
            thread.start()
        next_note = started + 60
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=1.0)
            if time.monotonic() >= next_note and time.monotonic() < deadline:
                done = sum(load.tally.statuses.values())
                print(f"soak: {time.monotonic() - started:.0f} s, {done} requests", flush=True)
                next_note += 60
            if time.monotonic() > deadline + max(EXPORT_BOUND_S, 2 * REQUEST_TIMEOUT) + 30:
                break  # reported below as a failed check, with the threads' names
        stuck = [t.name for t in threads if t.is_alive()]
        duration = time.monotonic() - started
        if feedback.full():
            print("soak: note: the feedback queue filled up; some ids got no feedback")

        time.sleep(SETTLE_SECONDS)
        ledger = read_ledger(url, load)
        late = None
        if ledger.missing:
            time.sleep(LATE_RECHECK_SECONDS)
            late = read_ledger(url, load)
        workers.sample(duration)  # one more look: still the same workers after the settle
        # the whole table once, with nothing else running: the big-export path (a sync worker
        # busy for longer than gunicorn's timeout must not be killed), and a count to check
        print("soak: exporting the whole outcomes table", flush=True)
        full = export_csv(client, tokens["analyst"], load, "export-csv-all", None)
        workers.sample(time.monotonic() - started)

        rss_table, rss_checks = rss_rows(workers, windows, duration)
        five = {k: n for k, n in load.tally.statuses.items() if k[1].startswith("5")}
        socket = {k: n for k, n in load.tally.statuses.items() if k[1].startswith("socket")}
        checks = [
            Check("no 5xx", not five, ", ".join(f"{k} {s}: {n}" for (k, s), n in five.items())
                  or "none"),
            Check("no socket error or timeout", not socket,
                  ", ".join(f"{k} {s}: {n}" for (k, s), n in socket.items()) or "none"),
            *rss_checks,
            Check("one primary outcome row per answered request id",
                  not ledger.missing and not ledger.duplicated and not ledger.extra,
                  f"{len(load.answered)} answered, {ledger.primary_ids} ids in the table; "
                  f"missing {len(ledger.missing)}"
                  + (f" ({len(late.missing)} after {LATE_RECHECK_SECONDS:g} s more)"
                     if late else "")
                  + f", duplicated {len(ledger.duplicated)}, never answered "
                  f"{len(ledger.extra)}"),
            Check("every 202 feedback is in the feedback table", not ledger.feedback_missing,
                  f"{len(load.feedback_accepted)} accepted, {ledger.feedback_rows} rows, "
                  f"missing {len(ledger.feedback_missing)}"),
            Check("no worker replaced", not workers.changes and len(workers.seen) == 2
                  and server.alive(),
                  "; ".join(workers.changes) or f"workers {workers.initial} served throughout"),
            Check("the whole-table export after the load has every row",
                  full is not None and full[0] == ledger.primary_rows + ledger.shadow_rows,
                  "export failed (see the failures)" if full is None else
                  f"{full[0]} rows exported in {full[2]:.1f} s, {ledger.primary_rows} primary "
                  f"+ {ledger.shadow_rows} shadow rows in the table"),
            Check("every client thread stopped by itself", not stuck,
                  f"still running: {', '.join(stuck)}" if stuck else "all stopped"),
        ]
        failed = not all(c.ok for c in checks)
        pg_now = postmaster_started(PG_ADMIN)
        pg_note = ("the shared PostgreSQL server was not restarted during the run"
                   if pg_now == pg_started else
                   f"**the shared PostgreSQL server was restarted during the run** (started "
                   f"{pg_started}, now {pg_now}): failures may come from that")
        server.stop()
        findings = log_findings(server.log_path.read_text(errors="replace"))
        server = None
        keep = failed or args.keep
        cleanup.append("server stopped by its PID (SIGTERM)")
        drop_database(PG_ADMIN, url)
        cleanup.append(f"database `{url.rsplit('/', 1)[1]}` dropped")
        url = ""
        cleanup.append(f"{delete_redis_keys(REDIS_URL, prefix)} Redis keys under `{prefix}` "
                       "deleted")
        text = report(args, command, load, workers, ledger, late, full, checks, duration,
                      windows,
                      rss_table, findings, cleanup, work / f"gateway-{port}.log" if keep
                      else None, pg_note, began, (load1, load5))
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
        print(f"soak: {'FAIL' if failed else 'PASS'}; report written to {args.out}")
        if failed:
            print("soak: failed: " + "; ".join(c.name for c in checks if not c.ok),
                  file=sys.stderr)
        return 1 if failed else 0
    finally:
        if server is not None:
            print(f"soak: server log kept in {server.log_path}", file=sys.stderr)
            server.stop()
        if url:
            drop_database(PG_ADMIN, url)
            delete_redis_keys(REDIS_URL, prefix)


if __name__ == "__main__":
    sys.exit(main())

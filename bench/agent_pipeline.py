"""The outcome pipeline as `gateway serve` runs it: worker-side senders -> agent -> database.

Starts a real agent process (`python -m gateway.agent.main`) on a fresh database (a temporary
SQLite file, and PostgreSQL on 127.0.0.1:5432 when it answers), then `--senders` threads, each
an `AgentSender` as a worker's flusher uses it, send `--records` outcome rows shaped like the
data plane's (digits: a label and ten probabilities as arrays) in batches of `--batch`, as fast
as the agent takes them; a batch the agent refuses (its socket full for 50 ms) is sent again.
Reported: rows in the `outcomes` table per second, from the first send to the last row counted
(polled with COUNT(*)), and how many batches were refused along the way.

    .venv/bin/python -m bench.agent_pipeline [--records 100000 --senders 2 --batch 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.outcome_pipeline import PG_ADMIN, count_rows, pg_database
from gateway.agent.channel import AgentSender
from tests.outcome_rows import outcome


def rows(prefix: str, start: int, count: int) -> list[dict]:
    made = []
    for i in range(start, start + count):
        row = outcome(i)
        row["request_id"] = f"{prefix}-{i}"
        row["outputs"] = {"label": np.array([i % 10]),
                          "probabilities": np.full((1, 10), 0.1, dtype=np.float32)}
        row["caller"] = "0123456789abcdef"
        made.append(row)
    return made


def measure(name: str, url: str, work: Path, records: int, senders: int, batch: int,
            max_seconds: float) -> str:
    from registry.db import Database
    from registry.migrate import upgrade

    upgrade(url)
    sock = work / f"agent-{name}.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": url, "GATEWAY_STATE_DIR": str(work / name)})
    agent = subprocess.Popen([sys.executable, "-m", "gateway.agent.main", "--socket", str(sock)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = Database(url)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                return f"| {name} | agent did not start | | |"
            time.sleep(0.05)
        per = records // senders
        prepared = [[rows(f"{name}-{s}", b, min(batch, per - b)) for b in range(0, per, batch)]
                    for s in range(senders)]
        refused = [0] * senders

        def send(index: int) -> None:
            sender = AgentSender(str(sock))
            for part in prepared[index]:
                while not sender.send(part):
                    refused[index] += 1
            sender.close()

        started = time.monotonic()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max_seconds)
        pushed = time.monotonic() - started
        total = per * senders
        stored = 0
        while time.monotonic() - started < max_seconds:
            stored = count_rows(db)
            if stored >= total:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        status = "ok" if stored >= total else f"partial: {stored} of {total}"
        return (f"| {name} | {total} | {pushed:.2f} | {elapsed:.2f} | {stored / elapsed:,.0f} "
                f"| {sum(refused)} | {status} |")
    finally:
        db.dispose()
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)


def pg_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_pipeline")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.records < args.senders or not 1 <= args.senders <= 16 or args.batch < 1:
        parser.error("--records >= --senders, 1 <= --senders <= 16, --batch >= 1")
    lines = ["| database | rows | sent in s | stored in s | rows/s | refused batches | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory(prefix="mgw-agent-pipeline-") as tmp:
        work = Path(tmp)
        for name in args.databases.split(","):
            if name == "sqlite":
                lines.append(measure(name, f"sqlite:///{work}/outcomes.db", work, args.records,
                                     args.senders, args.batch, args.max_seconds))
            elif name == "postgresql" and pg_reachable():
                with pg_database(PG_ADMIN) as url:
                    lines.append(measure(name, url, work, args.records, args.senders,
                                         args.batch, args.max_seconds))
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

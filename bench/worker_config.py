"""Which gunicorn worker class and thread count should the gateway run? wrk, interleaved.

One invocation starts every configuration at once, each a `gateway serve` on its own loopback
port (2 workers, auth on, outcome logging on, the `routing` variant of bench/run.py: a 90/10
policy with a sticky `X-Routing-Key` varying per request; one shared SQLite registry, one
`GATEWAY_STATE_DIR` each), plus the two floors of bench/run.py (`sync` = `gunicorn -k sync -w 2`,
`gthread` = the gateway's gunicorn config on bench/floor.py). Every case is measured for
`--rounds` rounds; a round runs every target once, in an order rotated by one each round, so the
machine's drift hits all alike. Reported per case: median req/s, p50, p99 over rounds and the
median of the per-round req/s ratios against each floor.

Configurations (`--configs`, comma-separated): `sync` (`--worker-class sync`, one thread),
`gthread-N` (`--worker-class gthread --threads N`), `gthread-N+batching` (the same, serving the
MLP as `mlp-batched`, a second registration with micro-batching on, so the other
configurations on the shared registry stay unbatched; MLP cases only).

    make bench-workers
    .venv/bin/python -m bench.worker_config --seconds 2 --rounds 3 --cases 'mlp b1'
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench.inprocess import Workload, build_workloads
from bench.run import (
    PROTOCOLS,
    REPO,
    VARIANTS,
    WRK_OVERHEAD_SECONDS,
    Run,
    Server,
    check_routing,
    fmt,
    get,
    machine_info,
    make_request,
    metrics_notes,
    post,
    select,
    start_floor,
    write_script,
    wrk,
)
from tests.server import free_port

DEFAULT_CONFIGS = "sync,gthread-4,gthread-8,gthread-16,gthread-16+batching"
DEFAULT_CASES = ("digits b1 predict-json c1", "digits b1 predict-json c8",
                 "mlp b1 predict-json c1", "mlp b1 predict-json c32", "mlp b32 v2-binary c8")
WORKLOADS = ("digits b1", "mlp b1", "mlp b32")
FLOORS = ("sync", "gthread")
BATCHED_MODEL = "mlp-batched"
WORKERS = 2
WARMUP_SECONDS = 1
PAUSE_SECONDS = 0.5
START_TIMEOUT = 180  # every server starts at once on a small machine


@dataclass(frozen=True)
class Config:
    name: str
    worker_class: str
    threads: int
    batching: bool = False

    @classmethod
    def parse(cls, name: str) -> Config:
        if name == "sync":
            return cls(name, "sync", 1)
        found = re.fullmatch(r"gthread-(\d+)(\+batching)?", name)
        if found is None or int(found.group(1)) < 1:
            raise ValueError(f"unknown configuration {name!r}: sync, gthread-N or "
                             "gthread-N+batching")
        return cls(name, "gthread", int(found.group(1)), bool(found.group(2)))

    def serves(self, workload: str) -> bool:
        return not self.batching or workload.startswith("mlp")

    def model(self, w: Workload) -> str:
        return BATCHED_MODEL if self.batching else w.model

    def describe(self, batching: str) -> str:
        what = (f"`gateway serve --workers {WORKERS} --worker-class {self.worker_class}"
                + (f" --threads {self.threads}`" if self.worker_class == "gthread" else "`"))
        if self.batching:
            max_batch, max_wait = batching.split(":")
            what += (f", MLP served as `{BATCHED_MODEL}` with `gateway models batching "
                     f"--max-batch {max_batch} --max-wait-us {max_wait}` (MLP cases only)")
        return what


@dataclass
class Case:
    id: str
    targets: list[str]  # "floor sync", "floor gthread", then the configurations serving it
    rounds: list[dict[str, Run]] = field(default_factory=list)

    @property
    def workload(self) -> str:
        return self.id.rsplit(" ", 2)[0]

    @property
    def protocol(self) -> str:
        return self.id.rsplit(" ", 2)[1]

    @property
    def conc(self) -> int:
        return int(self.id.rsplit(" ", 1)[1][1:])


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def case_table(case: Case) -> list[str]:
    lines = ["| config | req/s (median) | p50 ms | p99 ms | req/s ratio vs sync floor "
             "| vs gthread floor | req/s per round | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in case.targets:
        runs = [r[target] for r in case.rounds if target in r]
        ok = [run for run in runs if run.rps > 0]
        ratios = []
        for floor in FLOORS:
            pairs = [(r[target], r[f"floor {floor}"]) for r in case.rounds
                     if target in r and f"floor {floor}" in r]
            ratios.append(med([t.rps / f.rps for t, f in pairs if t.rps > 0 and f.rps > 0]))
        errors = [f"round {i + 1}: {run.errors}" for i, r in enumerate(case.rounds)
                  if (run := r.get(target)) is not None and run.errors]
        status = "ok" if not errors else "**FAILED**: " + "; ".join(errors)
        label = f"**{target}**" if target.startswith("floor") else target
        lines.append(f"| {label} | {fmt(med([r.rps for r in ok]), 0)} "
                     f"| {fmt(med([r.p50 for r in ok]), 3)} | {fmt(med([r.p99 for r in ok]), 3)} "
                     f"| {fmt(ratios[0])} | {fmt(ratios[1])} "
                     f"| {' / '.join(fmt(r.rps, 0) for r in runs)} | {status} |")
    return lines


def best(case: Case, configs: list[Config]) -> str | None:
    """The configuration with the highest median req/s among those with no failed run."""
    scores = {}
    for config in configs:
        runs = [r[config.name] for r in case.rounds if config.name in r]
        if runs and not any(run.errors for run in runs):
            scores[config.name] = med([run.rps for run in runs])
    if not scores:
        return None
    return max(scores, key=lambda k: scores[k])


def progress(case: Case) -> str:
    parts = []
    for target in case.targets:
        runs = [r[target] for r in case.rounds if target in r]
        flag = " FAILED" if any(run.errors for run in runs) else ""
        parts.append(f"{target} {fmt(med([run.rps for run in runs]), 0)}{flag}")
    return f"  {case.id}: req/s " + ", ".join(parts)


# --------------------------------------------------------------------------- arguments


def choose_cases(patterns: str | None) -> list[str]:
    """Substrings or globs over the default cases; a full id (`mlp b1 v2-json c8`) adds any
    other workload/protocol/concurrency."""
    if not patterns:
        return list(DEFAULT_CASES)
    chosen = select(list(DEFAULT_CASES), patterns)
    for pattern in (p.strip() for p in patterns.split(",")):
        found = re.fullmatch(r"(\S+ b\d+) (\S+) c(\d+)", pattern)
        if (found and found.group(1) in WORKLOADS and found.group(2) in PROTOCOLS
                and int(found.group(3)) >= 1 and pattern not in chosen):
            chosen.append(pattern)
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run, 1..15 (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min 3)")
    parser.add_argument("--cases", help="comma-separated substrings or globs over the default "
                                        f"cases ({', '.join(DEFAULT_CASES)}), or full ids of "
                                        "other cases")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"gateway configurations (default {DEFAULT_CONFIGS}); the two "
                             "floors always run")
    parser.add_argument("--batching", default="32:0", metavar="MAX_BATCH:MAX_WAIT_US",
                        help="micro-batching of the +batching configurations (default 32:0)")
    parser.add_argument("--out", default="bench/results/workers.md")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (models, bodies, server logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 15:
        parser.error("--seconds must be 1..15 (each run is bounded to 15 s)")
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if not re.fullmatch(r"\d+:\d+", args.batching):
        parser.error("--batching takes MAX_BATCH:MAX_WAIT_US, e.g. 32:0")
    try:
        args.configs = [Config.parse(c.strip()) for c in args.configs.split(",") if c.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.configs or len({c.name for c in args.configs}) != len(args.configs):
        parser.error("--configs takes distinct names such as sync,gthread-8,gthread-16+batching")
    args.chosen = choose_cases(args.cases)
    if not args.chosen:
        parser.error(f"--cases {args.cases!r} matches none of: {', '.join(DEFAULT_CASES)}")
    return args


def targets_for(case_id: str, configs: list[Config]) -> list[str]:
    workload = case_id.rsplit(" ", 2)[0]
    return [f"floor {f}" for f in FLOORS] + [c.name for c in configs if c.serves(workload)]


def estimate(args: argparse.Namespace) -> float:
    per_run = args.seconds + WRK_OVERHEAD_SECONDS + PAUSE_SECONDS
    runs = sum(len(targets_for(c, args.configs)) for c in args.chosen) * args.rounds * per_run
    groups = {c.rsplit(" ", 1)[0] for c in args.chosen}
    warmups = sum(len(targets_for(g + " c1", args.configs)) for g in groups) * (
        WARMUP_SECONDS + WRK_OVERHEAD_SECONDS + PAUSE_SECONDS)
    setup = 90  # build the models, register them, start every server, check routing, stop
    return runs + warmups + setup


# --------------------------------------------------------------------------- main


def on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the finally below stops every server


def stop_all(servers: dict[str, Server], state_dirs: list[Path]) -> None:
    """SIGTERM every server first (they shut down in parallel), then wait for each by PID; an
    embedded redis-server left behind by a gateway that had to be killed is stopped through its
    state directory's pid file."""
    from gateway.redis_embedded import EmbeddedRedis

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan
    try:
        for server in servers.values():
            if server.alive():
                server.proc.send_signal(signal.SIGTERM)
        for server in servers.values():
            server.stop()
        for state in state_dirs:
            EmbeddedRedis(state).stop()
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    cases = [Case(c, targets_for(c, configs)) for c in args.chosen]
    total = estimate(args)
    command = shlex.join(["python", "-m", "bench.worker_config",
                          *(argv if argv is not None else sys.argv[1:])])
    print(f"bench.worker_config: {len(cases)} cases x {args.rounds} rounds x "
          f"(2 floors + up to {len(configs)} configurations) x {args.seconds} s; estimated "
          f"total {total / 60:.1f} min (every wrk run stops after {args.seconds} s)", flush=True)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="mgw-workers-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workloads = {w.label: w for w in build_workloads(work)}
    batched = any(c.batching for c in configs) and any(c.workload.startswith("mlp")
                                                       for c in cases)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**base_env, "GATEWAY_DATABASE_URL": f"sqlite:///{work}/gw.db",
           "GATEWAY_MODEL_STORE": str(work / "store"), "GATEWAY_AUTH": "on"}
    gw_cli = [sys.executable, "-m", "gateway.cli.main"]

    def cli(*argv_: str) -> str:
        done = subprocess.run(gw_cli + list(argv_), env={**env, "GATEWAY_STATE_DIR": str(
            work / "state-cli")}, cwd=work, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            sys.exit(f"gateway {' '.join(argv_)} failed: {done.stderr or done.stdout}")
        return done.stdout

    print("registering the models...", flush=True)
    cli("db", "upgrade")
    policy = VARIANTS["routing"][1]
    names = [("digits", "digits b1"), ("mlp", "mlp b1")] + (
        [(BATCHED_MODEL, "mlp b1")] if batched else [])
    for name, label in names:
        w = workloads[label]
        cli("models", "register", name, str(w.path))
        cli("models", "register", name, str(w.twin))
        cli("traffic", "set", name, *policy, "--reason", "bench workers")
    max_batch, max_wait = args.batching.split(":")
    if batched:
        cli("models", "batching", BATCHED_MODEL, "--max-batch", max_batch, "--max-wait-us",
            max_wait, "--reason", "bench workers")
    token = cli("token", "create", "--role", "app", "--name", "bench").strip().splitlines()[-1]

    servers: dict[str, Server] = {}
    state_dirs: list[Path] = []
    notes: list[str] = []
    used_ports: set[int] = set()
    finished = False

    def port() -> int:
        while (p := free_port()) in used_ports:
            pass
        used_ports.add(p)
        return p

    def report(final: bool = False) -> None:
        lines = ["# Gateway worker class and threads (wrk, interleaved)", "", *machine_info(),
                 f"- command: `{command}`",
                 f"- settings: {args.seconds} s per run, {args.rounds} rounds (order rotated "
                 f"every round), wrk -t1, {WORKERS} workers everywhere; estimated "
                 f"{total / 60:.1f} min, elapsed {(time.monotonic() - started) / 60:.1f} min"
                 + ("" if final else " (incomplete)"),
                 "- gateway: auth on, outcome logging on, 90/10 policy, sticky X-Routing-Key "
                 "varying per request; one shared SQLite registry, a state directory (and "
                 "embedded Redis) per configuration; all servers up for the whole run",
                 "- floors: `floor sync` = bench/floor.py under `gunicorn -k sync -w 2`; "
                 "`floor gthread` = bench/floor.py under the gateway's gunicorn config "
                 "(gthread, 4 threads)", "", "## Configurations", "",
                 *[f"- `{c.name}`: {c.describe(args.batching)}" for c in configs], ""]
        for case in cases:
            if not case.rounds:
                continue
            lines += [f"## {case.id}", "", *case_table(case), ""]
            winner = best(case, configs)
            lines += [f"Highest median req/s without errors: **{winner or 'none'}**.", ""]
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        out.write_text("\n".join(lines))

    try:
        needed = {case.workload for case in cases}
        floor_models = {workloads[label].path: label for label in WORKLOADS if label in needed}
        for path, label in floor_models.items():
            for kind in FLOORS:
                server = start_floor(kind, path, work, base_env)
                servers[f"floor {kind} {workloads[label].model}"] = server
                used_ports.add(server.port)
        for config in configs:
            if not any(config.serves(case.workload) for case in cases):
                continue
            state = work / f"state-{config.name}"
            state_dirs.append(state)
            p = port()
            argv_ = gw_cli + ["serve", "--bind", f"127.0.0.1:{p}", "--workers", str(WORKERS),
                              "--worker-class", config.worker_class]
            if config.worker_class == "gthread":
                argv_ += ["--threads", str(config.threads)]
            servers[config.name] = Server(f"gw-{config.name}", argv_,
                                          {**env, "GATEWAY_STATE_DIR": str(state)}, work, p,
                                          work)
        print(f"started {len(servers)} servers; waiting for them...", flush=True)
        for name, server in servers.items():
            if name.startswith("floor"):
                model = name.rsplit(" ", 1)[1]
                req = make_request(workloads[f"{model} b1"], "predict-json", model)
                server.wait_ready(lambda s=server, r=req: post(s.port, r)[0] == 200,
                                  START_TIMEOUT)
            else:
                server.wait_ready(lambda s=server: get(s.port, "/readyz")[0] == 200,
                                  START_TIMEOUT)
        for config in configs:
            if config.name in servers:
                for note in check_routing(servers[config.name].port, workloads, ["routing"],
                                          token):
                    notes.append(f"{config.name}: {note.removeprefix('routing: ')}")

        def server_for(target: str, w: Workload) -> Server:
            return servers[f"{target} {w.model}"] if target.startswith("floor") else \
                servers[target]

        groups = list(dict.fromkeys(case.id.rsplit(" ", 1)[0] for case in cases))
        for group in groups:
            label, protocol = group.rsplit(" ", 1)
            w = workloads[label]
            group_cases = [c for c in cases if c.id.rsplit(" ", 1)[0] == group]
            scripts: dict[str, Path] = {}
            for target in group_cases[0].targets:
                config = next((c for c in configs if c.name == target), None)
                model = config.model(w) if config else w.model
                req = make_request(w, protocol, model)
                body = work / re.sub(r"[^\w.-]", "_", f"{group}-{target}.body")
                body.write_bytes(req.body)
                scripts[target] = write_script(body.with_suffix(".lua"), body, req, token)
                status, _, answer = post(server_for(target, w).port, req,
                                         {"Authorization": f"Bearer {token}"})
                if status != 200:
                    notes.append(f"{group}: {target} answered {status} to a first request: "
                                 f"{answer[:200]!r}")
                wrk(server_for(target, w).port, scripts[target], 8, WARMUP_SECONDS)  # warm-up
                time.sleep(PAUSE_SECONDS)
            for case in group_cases:
                for r in range(args.rounds):
                    shift = r % len(case.targets)
                    results: dict[str, Run] = {}
                    for target in case.targets[shift:] + case.targets[:shift]:
                        results[target] = wrk(server_for(target, w).port, scripts[target],
                                              case.conc, args.seconds)
                        time.sleep(PAUSE_SECONDS)
                    case.rounds.append(results)
                    for name, server in servers.items():
                        if not server.alive():
                            raise RuntimeError(f"{name} died during {case.id}:\n{server.tail()}")
                print(progress(case), flush=True)
                report()
        for config in configs:
            if config.batching and config.name in servers:
                notes += [f"{config.name}: {n}" for n in metrics_notes(servers[config.name].port)
                          if n.startswith(("batching", "/metrics"))]  # no shadow here
        report(final=True)
        finished = True
    finally:
        print(f"stopping {len(servers)} servers by PID...", flush=True)
        stop_all(servers, state_dirs)
        if not finished:
            partial = any(case.rounds for case in cases)
            if partial:
                report()
            print("bench.worker_config: interrupted; "
                  + (f"partial results in {out}, " if partial else "")
                  + f"server logs in {work}", flush=True)
    print(out.read_text())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench.worker_config: done in {(time.monotonic() - started) / 60:.1f} min "
          f"(estimated {total / 60:.1f}); written to {out}"
          + (f"; work files in {work}" if args.keep else ""))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

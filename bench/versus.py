"""The gateway beside the floor and the Python peers, interleaved in one invocation.

The table of issue 16: for each case, req/s, p50 and p99 of
- `floor`: `bench/floor.py` under `gunicorn -k sync -w 2` (and, with `--floors sync,gthread`,
  under the gateway's gthread config: a floor that keeps connections alive);
- `gateway`: `gateway serve` (README defaults: SQLite, embedded Redis; 2 workers, auth on,
  outcome log on), a 90/10 policy between two versions of equal cost, `X-Routing-Key` varying;
- `gateway-before` (with `--before PATH`): the same from another checkout, e.g. a worktree of an
  earlier commit, for a before/after table from one run; `gateway-nokeepalive`: this gateway
  closing every connection after one response (what keep-alive is worth);
- the peers, each from its own virtualenv (`make bench-peers-setup`), serving the same ONNX files
  with onnxruntime (1 intra-op thread) over V2 JSON bodies: MLServer 1.7 with
  `parallel_workers` 0 and 2 (`bench/peer_servers/mlserver_onnx.py`), and KServe's
  `ModelServer` with `--workers` 1 and 2 (`bench/peer_servers/kserve_onnx.py`).

A round runs every server once per case, in an order reversed every other round; ratios are
taken within a round and the median over rounds is reported. The gateway and the floor get the
case's own protocol (`/predict` JSON or V2 JSON); peers always get V2 JSON, their protocol. Every
server's answer is checked against onnxruntime run in this process before anything is measured.

    make bench-peers-setup     # once: the peers' virtualenvs under .bench-peers/
    make bench-peers           # this table, 5 s runs, 3 rounds (about 10 min)
    .venv/bin/python -m bench.versus --seconds 3 --servers floor,gateway,kserve-w2
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from bench.inprocess import Workload, build_workloads
from bench.run import (
    REPO,
    Request,
    Run,
    Server,
    fmt,
    get,
    machine_info,
    make_request,
    post,
    start_floor,
    write_script,
    wrk,
)
from tests.server import free_port

# (workload, protocol of the gateway and the floor, connections): the four rows
CASES = (("digits b1", "predict-json", 1), ("digits b1", "predict-json", 8),
         ("mlp b1", "predict-json", 32), ("mlp b32", "v2-json", 8))
PEERS = ("mlserver-pw0", "mlserver-pw2", "kserve-w1", "kserve-w2")
PEER_VENVS = REPO / ".bench-peers"
PAUSE_SECONDS = 0.5


@dataclass
class Case:
    workload: str
    protocol: str
    conc: int
    rounds: list[dict[str, Run]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.workload} {'/predict' if self.protocol == 'predict-json' else 'V2 JSON'} " \
               f"c{self.conc}"

    def med(self, server: str, what: str) -> float:
        values = [getattr(r[server], what) for r in self.rounds
                  if server in r and r[server].rps > 0]
        return statistics.median(values) if values else float("nan")

    def ratio(self, server: str, other: str | Callable[[dict[str, Run]], Run | None],
              what: str = "rps") -> float:
        values = []
        for r in self.rounds:
            mine = r.get(server)
            theirs = other(r) if callable(other) else r.get(other)
            if mine and theirs and mine.rps > 0 and theirs.rps > 0:
                values.append(getattr(mine, what) / getattr(theirs, what))
        return statistics.median(values) if values else float("nan")

    def errors(self) -> list[str]:
        return [f"round {i + 1} {name}: {run.errors}" for i, r in enumerate(self.rounds)
                for name, run in r.items() if run.errors]


def best_peer(peers: list[str]) -> Callable[[dict[str, Run]], Run | None]:
    """The round's fastest peer by req/s: the one a user would pick for this case."""
    def pick(r: dict[str, Run]) -> Run | None:
        runs = [r[p] for p in peers if p in r and r[p].rps > 0]
        return max(runs, key=lambda run: run.rps) if runs else None
    return pick


# --------------------------------------------------------------------------- servers


def equal_twin(path: Path, out: Path) -> Path:
    """The same graph under another file hash: a second version that costs exactly as much."""
    if not out.exists():
        import onnx

        model = onnx.load(str(path))
        model.doc_string = "bench twin"
        onnx.save(model, str(out))
    return out


def start_gateway(name: str, tree: Path, work: Path, workloads: dict[str, Workload],
                  extra_env: dict[str, str] | None = None) -> tuple[Server, str]:
    """`gateway serve` from `tree` on its own SQLite file and embedded Redis, with `digits`
    (logreg twice: versions of equal cost) and `mlp` (two seeds) at 90/10; and an app token."""
    home = work / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": f"sqlite:///{home}/gw.db",
                "GATEWAY_MODEL_STORE": str(home / "store"),
                "GATEWAY_STATE_DIR": str(home / "state"), "GATEWAY_WORKERS": "2",
                "GATEWAY_AUTH": "on", "PYTHONPATH": str(tree), **(extra_env or {})})
    gw = [sys.executable, "-m", "gateway.cli.main"]

    def cli(*argv: str) -> str:
        done = subprocess.run(gw + list(argv), env=env, cwd=home, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise SystemExit(f"{name}: gateway {shlex.join(argv)} failed: {done.stderr}")
        return done.stdout

    cli("db", "upgrade")
    digits, mlp = workloads["digits b1"], workloads["mlp b1"]
    twin = equal_twin(digits.path, work / "logreg-twin.onnx")
    for model, files in (("digits", (digits.path, twin)), ("mlp", (mlp.path, mlp.twin))):
        for path in files:
            cli("models", "register", model, str(path))
        cli("traffic", "set", model, "1=90", "2=10", "--reason", "bench versus")
    token = cli("token", "create", "--role", "app", "--name", "bench").strip().splitlines()[-1]
    port = free_port()
    server = Server(name, gw + ["serve", "--bind", f"127.0.0.1:{port}"], env, home, port, work)
    server.wait_ready(lambda: get(port, "/healthz")[0] == 200, timeout=120)
    return server, token


def start_mlserver(name: str, workers: int, work: Path, workloads: dict[str, Workload]
                   ) -> Server:
    home = work / name
    ports = [free_port() for _ in range(3)]
    (home / "models").mkdir(parents=True)
    (home / "settings.json").write_bytes(orjson.dumps({
        "http_port": ports[0], "grpc_port": ports[1], "metrics_port": ports[2],
        "parallel_workers": workers, "debug": False, "host": "127.0.0.1"}))
    for model, workload in (("digits", workloads["digits b1"]), ("mlp", workloads["mlp b1"])):
        folder = home / "models" / model
        folder.mkdir()
        (folder / "model-settings.json").write_bytes(orjson.dumps({
            "name": model, "implementation": "mlserver_onnx.OnnxRuntime",
            "parameters": {"uri": str(workload.path)}}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "peer_servers")}
    argv = [str(PEER_VENVS / "mlserver" / "bin" / "mlserver"), "start", str(home)]
    server = Server(name, argv, env, home, ports[0], work)
    server.wait_ready(lambda: all(get(ports[0], f"/v2/models/{m}/ready")[0] == 200
                                  for m in ("digits", "mlp")), timeout=180)
    return server


def start_kserve(name: str, workers: int, work: Path, workloads: dict[str, Workload]
                 ) -> Server:
    port = free_port()
    argv = [str(PEER_VENVS / "kserve" / "bin" / "python"),
            str(REPO / "bench" / "peer_servers" / "kserve_onnx.py"), "--http_port", str(port),
            "--workers", str(workers),
            "--model", f"digits={workloads['digits b1'].path}",
            "--model", f"mlp={workloads['mlp b1'].path}"]
    server = Server(name, argv, dict(os.environ), work, port, work)
    server.wait_ready(lambda: all(get(port, f"/v2/models/{m}/ready")[0] == 200
                                  for m in ("digits", "mlp")), timeout=180)
    return server


def start_peer(name: str, work: Path, workloads: dict[str, Workload]) -> Server:
    kind, _, count = name.partition("-")
    workers = int(count.removeprefix("pw").removeprefix("w"))
    start = start_mlserver if kind == "mlserver" else start_kserve
    return start(name, workers, work, workloads)


def peer_missing(name: str) -> str | None:
    venv = PEER_VENVS / name.partition("-")[0]
    if not (venv / "bin" / "python").exists():
        return f"{venv} is missing: run `make bench-peers-setup`"
    return None


# --------------------------------------------------------------------------- checks


def reference(workload: Workload) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(workload.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {workload.input_name: workload.x}), strict=True))


def answer_outputs(protocol: str, body: bytes) -> dict[str, np.ndarray]:
    data = orjson.loads(body)
    if protocol == "predict-json" and "outputs" in data and isinstance(data["outputs"], dict):
        return {k: np.asarray(v) for k, v in data["outputs"].items()}
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in data["outputs"]}


def check_answer(server: str, port: int, req: Request, protocol: str, token: str,
                 want: dict[str, np.ndarray]) -> None:
    """The server answers this case's request with what onnxruntime gives here (the gateway
    pinned to version 1: its version 2 is another file)."""
    pin = {"X-Model-Version": "1"} if server.startswith("gateway") else {}
    status, _, body = post(port, req, {"Authorization": f"Bearer {token}", **pin})
    if status != 200:
        raise SystemExit(f"{server} answered {status}: {body[:300]!r}")
    got = answer_outputs(protocol, body)
    for name, value in want.items():
        if name not in got:
            raise SystemExit(f"{server} did not return output {name!r}: {sorted(got)}")
        if not np.allclose(np.asarray(got[name], dtype=np.float64).ravel(),
                           np.asarray(value, dtype=np.float64).ravel(), rtol=1e-4, atol=1e-5):
            raise SystemExit(f"{server} returned a different {name!r} than onnxruntime")


# --------------------------------------------------------------------------- report


def table(cases: list[Case], servers: list[str], peers: list[str]) -> list[str]:
    floor = "floor-sync"
    head = ["case", "floor req/s"]
    cols = [s for s in servers if s != floor]
    head += [f"{s} req/s" for s in cols]
    head += ["gateway x floor"]
    if "gateway-before" in servers:
        head += ["gateway x before"]
    if peers:
        head += ["gateway x best peer"]
    head += ["p50 ms (floor / gateway" + (" / best peer)" if peers else ")"),
             "p99 ms (floor / gateway" + (" / best peer)" if peers else ")")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    best = best_peer(peers)
    for case in cases:
        row = [case.id, fmt(case.med(floor, "rps"), 0)]
        row += [fmt(case.med(s, "rps"), 0) for s in cols]
        row += [fmt(case.ratio("gateway", floor))]
        if "gateway-before" in servers:
            row += [fmt(case.ratio("gateway", "gateway-before"))]
        p50 = [fmt(case.med(floor, "p50")), fmt(case.med("gateway", "p50"))]
        p99 = [fmt(case.med(floor, "p99")), fmt(case.med("gateway", "p99"))]
        if peers:
            row += [fmt(case.ratio("gateway", best))]
            picks = [b for b in (best(r) for r in case.rounds) if b is not None]
            p50.append(fmt(statistics.median([b.p50 for b in picks])) if picks else "n/a")
            p99.append(fmt(statistics.median([b.p99 for b in picks])) if picks else "n/a")
        row += [" / ".join(p50), " / ".join(p99)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(cases: list[Case], peers: list[str]) -> list[str]:
    """Issue 16's targets, each PASS or MISS with its figure."""
    floor, best = "floor-sync", best_peer(peers)
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'PASS' if ok else 'MISS'}: {text}")

    for case in cases:
        if case.workload == "digits b1":
            r = case.ratio("gateway", floor)
            line(r >= 1.0, f"{case.id}: req/s {fmt(r)}x the floor (target >= 1.0)")
            p99 = case.ratio("gateway", floor, "p99")
            line(p99 <= 1.5, f"{case.id}: p99 {fmt(p99)}x the floor's (target <= 1.5)")
            if case.conc == 1:
                added = case.med("gateway", "p50") - case.med(floor, "p50")
                line(added <= 0.10, f"{case.id}: p50 added {fmt(added, 3)} ms (target <= 0.10)")
        if peers and (case.workload, case.conc) in (("digits b1", 8), ("mlp b1", 32)):
            r = case.ratio("gateway", best)
            line(r >= 2.0, f"{case.id}: req/s {fmt(r)}x the best peer (target >= 2.0)")
        if peers and case.conc == 1:
            for what in ("p50", "p99"):
                r = case.ratio("gateway", best, what)
                line(r < 1.0, f"{case.id}: {what} {fmt(r)}x the best peer's (target < 1.0)")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, choices=range(1, 16),
                        metavar="1-15")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(("floor-sync", "gateway", *PEERS)),
                        help="comma-separated: floor-sync, floor-gthread, gateway, "
                             "gateway-before (needs --before), gateway-nokeepalive (the same "
                             "gateway with GATEWAY_KEEPALIVE_SECONDS=0), " + ", ".join(PEERS))
    parser.add_argument("--before", type=Path, help="a checkout to run as gateway-before")
    parser.add_argument("--out", default="bench/results/versus.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    known = {"floor-sync", "floor-gthread", "gateway", "gateway-before", "gateway-nokeepalive",
             *PEERS}
    unknown = [s for s in args.servers if s not in known]
    if unknown or "gateway" not in args.servers or "floor-sync" not in args.servers:
        parser.error(f"--servers needs floor-sync and gateway, and knows {sorted(known)}; "
                     f"unknown: {unknown}")
    if ("gateway-before" in args.servers) != (args.before is not None):
        parser.error("gateway-before and --before go together")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    notes = []
    for peer in [s for s in args.servers if s in PEERS]:
        reason = peer_missing(peer)
        if reason:
            notes.append(f"{peer} skipped: {reason}")
            args.servers.remove(peer)
    peers = [s for s in args.servers if s in PEERS]
    runs = len(CASES) * args.rounds * len(args.servers)
    print(f"versus: {len(CASES)} cases x {args.rounds} rounds x {len(args.servers)} servers x "
          f"{args.seconds} s: about {runs * (args.seconds + 2) / 60:.1f} min plus start-up",
          flush=True)
    for note in notes:
        print(f"versus: {note}", flush=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mgw-versus-"))
    workloads = {w.label: w for w in build_workloads(work)}
    servers: dict[str, Server] = {}
    tokens: dict[str, str] = {}
    try:
        for name in args.servers:
            print(f"versus: starting {name}", flush=True)
            if name.startswith("floor-"):
                # one floor per model file; the floor serves whatever name it is asked
                for model in ("digits", "mlp"):
                    w = workloads["digits b1" if model == "digits" else "mlp b1"]
                    floor = start_floor(name.removeprefix("floor-"), w.path, work,
                                        {k: v for k, v in os.environ.items()
                                         if not k.startswith("GATEWAY_")})
                    floor.wait_ready(lambda f=floor: get(f.port, "/")[0] == 404, timeout=60)
                    servers[f"{name}:{model}"] = floor
            elif name.startswith("gateway"):
                tree = args.before.resolve() if name == "gateway-before" else REPO
                extra = {"GATEWAY_KEEPALIVE_SECONDS": "0"} if name.endswith("nokeepalive") else {}
                servers[name], tokens[name] = start_gateway(name, tree, work, workloads, extra)
            else:
                servers[name] = start_peer(name, work, workloads)
        cases = [Case(*spec) for spec in CASES]
        scripts: dict[tuple[str, str], Path] = {}
        for case in cases:
            w = workloads[case.workload]
            want = reference(w)
            for name in args.servers:
                protocol = case.protocol if name.startswith(("gateway", "floor")) else "v2-json"
                req = make_request(w, protocol, w.model)
                key = (case.id, name)
                body = work / f"body-{len(scripts)}"
                body.write_bytes(req.body)
                token = tokens.get(name, "none")
                scripts[key] = write_script(work / f"script-{len(scripts)}.lua", body, req,
                                            token)
                port = port_of(servers, name, w.model)
                check_answer(name, port, req, protocol, token, want)
        for round_index in range(args.rounds):
            order = args.servers if round_index % 2 == 0 else list(reversed(args.servers))
            for case in cases:
                runs_now: dict[str, Run] = {}
                for name in order:
                    port = port_of(servers, name, workloads[case.workload].model)
                    runs_now[name] = wrk(port, scripts[(case.id, name)], case.conc,
                                         args.seconds)
                    time.sleep(PAUSE_SECONDS)
                case.rounds.append(runs_now)
                print(f"versus: round {round_index + 1} {case.id}: " + ", ".join(
                    f"{n} {r.rps:.0f}" for n, r in runs_now.items()), flush=True)
        command = shlex.join(["python", "-m", "bench.versus", *(argv or sys.argv[1:])])
        lines = ["# The gateway beside the floor and the Python peers (wrk, interleaved)", "",
                 *machine_info(), f"- command: `{command}`",
                 f"- {args.seconds} s per run, {args.rounds} rounds, wrk -t1; elapsed "
                 f"{(time.monotonic() - started) / 60:.1f} min",
                 *(f"- {note}" for note in notes), "",
                 *table(cases, args.servers, peers), "", "## Targets (issue 16)", "",
                 *targets(cases, peers), ""]
        errors = [e for case in cases for e in case.errors()]
        if errors:
            lines += ["## Errors", "", *(f"- {e}" for e in errors), ""]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
        print("\n".join(lines), flush=True)
        print(f"versus: written to {out}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print(f"versus: work directory kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def port_of(servers: dict[str, Server], name: str, model: str) -> int:
    return servers[f"{name}:{model}" if name.startswith("floor-") else name].port


if __name__ == "__main__":
    main()

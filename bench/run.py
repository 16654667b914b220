"""Gateway vs floor with wrk, interleaved in one invocation; writes a markdown table of ratios.

The matrix: workloads {digits b1, mlp b1, mlp b32} x protocols {predict-json, v2-json,
v2-binary} x concurrency {1, 8, 32}. Each case is measured for `--rounds` rounds; a round runs
every floor and every gateway variant once, alternately (floor, gateway, floor, gateway; the
order reversed every other round), so the machine's drift hits both alike. Reported: the median
of the per-round ratios (gateway / floor) of req/s, p50 and p99, and the median added p50.

Floors (`bench/floor.py`, one ONNX file, no validation/auth/routing/logging):
- `sync`: plain `gunicorn -k sync -w 2`, the configuration of the issue's reference table;
- `gthread`: the gateway's own gunicorn config (`-c python:gateway.web.gunicorn_conf`).

Gateway variants (one `gateway serve`, auth on, outcome logging on, sticky `X-Routing-Key`
varying per request):
- `routing`: a 90/10 policy between two versions (models `digits`, `mlp`);
- `shadow`: 100% to version 1 plus a 100% shadow of version 2 (models `digits-shadow`,
  `mlp-shadow`: same files, so both variants live in one gateway and need no policy switching).

Bounded: loopback only, every server on a free 127.0.0.1 port, started and stopped by PID; each
wrk run lasts `--seconds` (at most 15) and stops by itself. See bench/README.md.

    make bench          # full matrix, 10 s runs, 3 rounds
    make bench-quick    # a few cases, 3 s runs
    .venv/bin/python -m bench.run --seconds 3 --rounds 3 --cases digits
"""

from __future__ import annotations

import argparse
import fnmatch
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.inprocess import InProcess, Workload, build_workloads, measure
from bench.inprocess import table as inprocess_table
from tests.server import free_port

PROTOCOLS = ("predict-json", "v2-json", "v2-binary")
CONCURRENCY = (1, 8, 32)
FLOORS = ("sync", "gthread")
VARIANTS = {
    "routing": ("", ["1=90", "2=10"], "90/10 policy, sticky X-Routing-Key varying per request, "
                "auth on, outcome logging on"),
    "shadow": ("-shadow", ["1=100", "--shadow", "2=100"],
               "100% to version 1 plus a 100% shadow of version 2, auth on, outcome logging on"),
}
REPO = Path(__file__).resolve().parents[1]
WARMUP_SECONDS = 1
PAUSE_SECONDS = 0.5  # between runs: lets a shadow queue drain before the next server is measured
WRK_OVERHEAD_SECONDS = 0.3

LUA = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "{content_type}"
{extra}
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-Routing-Key"] = "user-" .. (counter % 1000)
  return wrk.format(nil, "{path}")
end
"""


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


def make_request(workload: Workload, protocol: str, model: str) -> Request:
    """The bytes a client sends: the gateway's /predict JSON, or tritonclient's own encoding."""
    if protocol == "predict-json":
        body = orjson.dumps({"model": model, "inputs": {workload.input_name: workload.x}},
                            option=orjson.OPT_SERIALIZE_NUMPY)
        return Request("/predict", body, {"Content-Type": "application/json"})
    import onnxruntime as ort
    import tritonclient.http as triton

    binary = protocol == "v2-binary"
    tensor = triton.InferInput(workload.input_name, list(workload.x.shape), "FP32")
    tensor.set_data_from_numpy(workload.x, binary_data=binary)
    names = [o.name for o in ort.InferenceSession(
        str(workload.path), providers=["CPUExecutionProvider"]).get_outputs()]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs)
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return Request(f"/v2/models/{model}/infer", body, headers)


def post(port: int, req: Request, extra: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", req.path, body=req.body, headers={**req.headers, **(extra or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def decode_outputs(protocol: str, headers: dict[str, str], body: bytes) -> dict[str, np.ndarray]:
    if protocol == "predict-json":
        return {k: np.asarray(v) for k, v in orjson.loads(body)["outputs"].items()}
    import tritonclient.http as triton

    length = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    result = triton.InferResult.from_response_body(body, header_length=int(length) if length
                                                   else None)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """None when equal (within float tolerance); else what differs."""
    if set(a) != set(b):
        return f"output names differ: {sorted(a)} vs {sorted(b)}"
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return f"{name}: shape {list(x.shape)} vs {list(y.shape)}"
        if not np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=1e-4, atol=1e-5):
            return f"{name}: values differ (max abs diff {np.abs(x - y).max():.3g})"
    return None


# --------------------------------------------------------------------------- processes


class Server:
    """A server process started by this script, stopped by its PID (its own process group)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
                 port: int, logs: Path) -> None:
        self.name, self.port = name, port
        self.log_path = logs / f"{name}-{port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def wait_ready(self, probe: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            try:
                if probe():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not come up in {timeout} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this script created
                self.proc.wait(10)
        self._log.close()


def start_floor(kind: str, model: Path, work: Path, env: dict[str, str]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    if kind == "sync":  # gunicorn's defaults; no control socket, shared by all gunicorns
        argv += ["-k", "sync", "-w", "2", "--no-control-socket"]
    else:  # the gateway's gunicorn config, in its gthread form
        argv[3:3] = ["-c", "python:gateway.web.gunicorn_conf"]
        env = {"GATEWAY_WORKER_CLASS": "gthread", **env}
    argv.append("bench.floor:app")
    return Server(f"floor-{kind}", argv, {**env, "BENCH_MODEL": str(model)}, REPO, port, work)


# --------------------------------------------------------------------------- wrk


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: str | None  # None when every response was 2xx/3xx with no socket error


def wrk(port: int, script: Path, connections: int, seconds: int) -> Run:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20)
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if done.returncode != 0 or rps is None or count is None:
        return Run(0.0, float("nan"), float("nan"), 0,
                   f"wrk failed ({done.returncode}): {(done.stderr or out).strip()[:200]}")

    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if found is None:
            return float("nan")
        value, unit = found.groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    errors = []
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors.append(f"{non2xx.group(1)} non-2xx")
    sockets = re.search(r"Socket errors: (.*)", out)
    if sockets:
        errors.append(f"socket errors ({sockets.group(1).strip()})")
    if int(count.group(1)) == 0:
        errors.append("no request completed")
    return Run(float(rps.group(1)), ms("50"), ms("99"), int(count.group(1)),
               "; ".join(errors) or None)


def write_script(path: Path, body: Path, req: Request, token: str) -> Path:
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in req.headers.items()
                      if k != "Content-Type")
    path.write_text(LUA.format(body=body, token=token, path=req.path, extra=extra,
                               content_type=req.headers["Content-Type"]))
    return path


# --------------------------------------------------------------------------- results


@dataclass
class Case:
    workload: str
    protocol: str
    conc: int
    # per round: target name ("floor:sync", "gateway:routing") -> Run
    rounds: list[dict[str, Run]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.workload} {self.protocol} c{self.conc}"

    def pair(self, floor: str, variant: str) -> dict[str, Any] | None:
        pairs = [(r[f"floor:{floor}"], r[f"gateway:{variant}"]) for r in self.rounds
                 if f"floor:{floor}" in r and f"gateway:{variant}" in r]
        if not pairs:
            return None
        errors = [f"round {i + 1} {who}: {run.errors}" for i, (f, g) in enumerate(pairs)
                  for who, run in (("floor", f), ("gateway", g)) if run.errors]
        ok = [(f, g) for f, g in pairs if f.rps > 0 and g.rps > 0]

        def med(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        return {
            "floor_rps": med([f.rps for f, _ in ok]), "gw_rps": med([g.rps for _, g in ok]),
            "rps_ratio": med([g.rps / f.rps for f, g in ok]),
            "floor_p50": med([f.p50 for f, _ in ok]), "gw_p50": med([g.p50 for _, g in ok]),
            "added_p50": med([g.p50 - f.p50 for f, g in ok]),
            "p50_ratio": med([g.p50 / f.p50 for f, g in ok]),
            "p99_ratio": med([g.p99 / f.p99 for f, g in ok]),
            "floor_p99": med([f.p99 for f, _ in ok]), "gw_p99": med([g.p99 for _, g in ok]),
            "errors": errors, "rounds": len(pairs),
        }


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def variant_table(cases: list[Case], floor: str, variant: str) -> list[str]:
    lines = ["| case | protocol | conc | floor req/s | gateway req/s | req/s ratio | floor p50 ms "
             "| gateway p50 ms | added p50 ms | p50 ratio | p99 ratio | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case in cases:
        p = case.pair(floor, variant)
        if p is None:
            continue
        status = "ok" if not p["errors"] else "**FAILED**: " + "; ".join(p["errors"])
        lines.append(
            f"| {case.workload} | {case.protocol} | {case.conc} | {fmt(p['floor_rps'], 0)} "
            f"| {fmt(p['gw_rps'], 0)} | {fmt(p['rps_ratio'])} | {fmt(p['floor_p50'], 3)} "
            f"| {fmt(p['gw_p50'], 3)} | {fmt(p['added_p50'], 3)} | {fmt(p['p50_ratio'])} "
            f"| {fmt(p['p99_ratio'])} | {status} |")
    return lines


def must_show(cases: list[Case], floors: list[str], inproc: dict[str, InProcess],
              batching: str | None) -> list[str]:
    by_id = {c.id: c for c in cases}
    lines = ["| check | floor | measured | target | result |", "| --- | --- | --- | --- | --- |"]

    def verdict(ok: bool, p: dict[str, Any] | None) -> str:
        if p is not None and p["errors"]:
            return "FAIL (errors in the run)"
        return "PASS" if ok else "FAIL"

    def routed(case_id: str, floor: str) -> dict[str, Any] | None:
        case = by_id.get(case_id)
        return case.pair(floor, "routing") if case else None

    for floor in floors:
        for conc in (1, 8):
            p = routed(f"digits b1 predict-json c{conc}", floor)
            if p is None:
                lines.append(f"| routed /predict digits b1 c{conc} req/s ratio | {floor} "
                             "| not measured | >= 0.9 | - |")
                continue
            lines.append(f"| routed /predict digits b1 c{conc} req/s ratio | {floor} "
                         f"| {fmt(p['rps_ratio'])} | >= 0.9 | "
                         f"{verdict(p['rps_ratio'] >= 0.9, p)} |")
        p = routed("digits b1 predict-json c1", floor)
        if p is not None:
            lines.append(f"| routed /predict digits b1 c1 added p50 | {floor} "
                         f"| {fmt(p['added_p50'], 3)} ms | <= 0.15 ms | "
                         f"{verdict(p['added_p50'] <= 0.15, p)} |")
    case = by_id.get("mlp b32 v2-binary c1")
    base = inproc.get("mlp b32")
    if case is not None and base is not None:
        gw = [r["gateway:routing"] for r in case.rounds if "gateway:routing" in r]
        p50 = statistics.median([g.p50 for g in gw]) if gw else float("nan")
        ratio = p50 / base.p50_ms
        failed = any(g.errors for g in gw)
        result = "FAIL (errors in the run)" if failed else ("PASS" if ratio <= 2 else "FAIL")
        lines.append(f"| V2 binary MLP b32 c1: gateway p50 / in-process p50 | - | {fmt(p50, 3)} / "
                     f"{base.p50_ms:.3f} ms = {fmt(ratio)}x | <= 2x | {result} |")
    else:
        lines.append("| V2 binary MLP b32 c1: gateway p50 / in-process p50 | - | not measured "
                     "| <= 2x | - |")
    note = f"batching {batching}" if batching else "batching OFF (pass --batching)"
    for floor in floors:
        p = routed("mlp b1 predict-json c32", floor)
        if p is None:
            lines.append(f"| routed MLP b1 c32 req/s ratio, p99 ratio ({note}) | {floor} "
                         "| not measured | >= 1.5x, <= 1.0 | - |")
            continue
        ok = p["rps_ratio"] >= 1.5 and p["p99_ratio"] <= 1.0
        lines.append(f"| routed MLP b1 c32 req/s ratio, p99 ratio ({note}) | {floor} "
                     f"| {fmt(p['rps_ratio'])}x, {fmt(p['p99_ratio'])} | >= 1.5x, <= 1.0 "
                     f"| {verdict(ok, p)} |")
    return lines


def machine_info() -> list[str]:
    import gunicorn
    import onnxruntime

    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    wrk_version = wrk_version.splitlines()[0].split(" Copyright")[0] if wrk_version else "wrk ?"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip() or "unknown"
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True, cwd=REPO).stdout.strip():
        commit += " with uncommitted changes"
    return [f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- machine: nproc {os.cpu_count()}, {cpu}, {platform.platform()}",
            f"- python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"gunicorn {gunicorn.__version__}, {wrk_version}",
            f"- commit: {commit}"]


# --------------------------------------------------------------------------- main


def select(ids: list[str], patterns: str | None) -> list[str]:
    if not patterns:
        return ids
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]

    def hit(case_id: str, pattern: str) -> bool:
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatchcase(case_id, pattern)
        return pattern in case_id

    return [i for i in ids if any(hit(i, p) for p in wanted)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run, 1..15 (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min 3)")
    parser.add_argument("--quick", action="store_true", help="allow fewer than 3 rounds")
    parser.add_argument("--cases", help="comma-separated substrings or globs over case ids such "
                                        "as 'mlp b32 v2-binary c8' (default: all 27)")
    parser.add_argument("--variants", default="routing,shadow", help="routing,shadow")
    parser.add_argument("--floor-worker-class", default="both",
                        choices=["sync", "gthread", "both"],
                        help="sync: gunicorn -k sync -w 2 (the reference table); gthread: the "
                             "gateway's gunicorn config; both (default)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the gateway (and the gthread floor, which shares "
                             "its gunicorn config), e.g. GATEWAY_THREADS=16; repeatable")
    parser.add_argument("--batching", metavar="MAX_BATCH:MAX_WAIT_US",
                        help="micro-batch the mlp models (gateway models batching ...)")
    parser.add_argument("--out", default="bench/results/latest.md")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (models, bodies, server logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 15:
        parser.error("--seconds must be 1..15 (each run is bounded to 15 s)")
    if args.rounds < (1 if args.quick else 3):
        parser.error("--rounds must be at least 3 (or pass --quick)")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if not args.variants or unknown:
        parser.error(f"--variants takes {','.join(VARIANTS)}")
    args.floors = list(FLOORS) if args.floor_worker_class == "both" else [args.floor_worker_class]
    pairs = {}
    for item in args.gateway_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--gateway-env takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    args.gateway_env = pairs
    if args.batching and not re.fullmatch(r"\d+:\d+", args.batching):
        parser.error("--batching takes MAX_BATCH:MAX_WAIT_US, e.g. 32:2000")
    return args


def estimate(n_cases: int, n_wp: int, args: argparse.Namespace) -> float:
    targets = len(args.floors) + len(args.variants)
    runs = n_cases * args.rounds * targets * (args.seconds + WRK_OVERHEAD_SECONDS + PAUSE_SECONDS)
    warmups = n_wp * targets * (WARMUP_SECONDS + WRK_OVERHEAD_SECONDS + PAUSE_SECONDS)
    floor_starts = n_wp * len(args.floors) * 4
    setup = 45  # build the models, register, start the gateway, in-process floor
    return runs + warmups + floor_starts + setup


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ids = [f"{w} {p} c{c}" for w in ("digits b1", "mlp b1", "mlp b32") for p in PROTOCOLS
           for c in CONCURRENCY]
    chosen = select(ids, args.cases)
    if not chosen:
        sys.exit(f"--cases {args.cases!r} matches none of: {', '.join(ids)}")
    wp = sorted({i.rsplit(" ", 1)[0] for i in chosen}, key=lambda s: ids.index(s + " c1"))
    total = estimate(len(chosen), len(wp), args)
    command = shlex.join(["python", "-m", "bench.run", *(argv if argv is not None
                                                         else sys.argv[1:])])
    print(f"bench: {len(chosen)} cases x {args.rounds} rounds x "
          f"({len(args.floors)} floor(s) + {len(args.variants)} gateway variant(s)) x "
          f"{args.seconds} s; estimated total {total / 60:.1f} min "
          f"(every wrk run stops after {args.seconds} s)", flush=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mgw-bench-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workloads = {w.label: w for w in build_workloads(work)}
    print("in-process floor (session.run alone, intra-op threads 1):", flush=True)
    inproc = {label: measure(w) for label, w in workloads.items()}
    print("\n".join(inprocess_table(list(inproc.values()))), flush=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": f"sqlite:///{work}/gw.db",
                "GATEWAY_MODEL_STORE": str(work / "store"),
                "GATEWAY_STATE_DIR": str(work / "state"), "GATEWAY_WORKERS": "2",
                "GATEWAY_AUTH": "on", **args.gateway_env})
    notes: list[str] = []
    gw_cli = [sys.executable, "-m", "gateway.cli.main"]

    def cli(*argv_: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(gw_cli + list(argv_), env=env, cwd=work, check=check,
                              capture_output=True, text=True, timeout=120)

    cli("db", "upgrade")
    for model in ("digits", "mlp"):
        w = next(w for w in workloads.values() if w.model == model)
        for variant in args.variants:
            name = model + VARIANTS[variant][0]
            cli("models", "register", name, str(w.path))
            cli("models", "register", name, str(w.twin))
            cli("traffic", "set", name, *VARIANTS[variant][1], "--reason", f"bench {variant}")
    token = cli("token", "create", "--role", "app", "--name", "bench").stdout.strip().splitlines(
        )[-1]
    batching = None
    if args.batching:
        max_batch, max_wait = args.batching.split(":")
        if cli("models", "batching", "--help", check=False).returncode != 0:
            message = ("`gateway models batching` is not available in this checkout; "
                       "measuring WITHOUT batching")
            print(f"bench: {message}", flush=True)
            notes.append(f"--batching {args.batching} requested: {message}.")
        else:
            for variant in args.variants:
                done = cli("models", "batching", "mlp" + VARIANTS[variant][0], "--max-batch",
                           max_batch, "--max-wait-us", max_wait, "--reason", "bench", check=False)
                if done.returncode != 0:
                    sys.exit(f"gateway models batching failed: {done.stderr or done.stdout}")
            batching = args.batching

    port = free_port()
    gateway = Server("gateway", gw_cli + ["serve", "--bind", f"127.0.0.1:{port}"], env, work,
                     port, work)
    floors: dict[str, Server] = {}
    cases: list[Case] = []

    def report() -> None:
        lines = ["# Gateway vs floor (wrk, interleaved)", "", *machine_info(),
                 f"- command: `{command}`",
                 f"- settings: {args.seconds} s per run, {args.rounds} rounds, wrk -t1, "
                 f"floors: {', '.join(args.floors)}, gateway env: "
                 f"{' '.join(f'{k}={v}' for k, v in args.gateway_env.items()) or 'defaults'}, "
                 f"batching: {batching or 'off'}",
                 f"- elapsed: {(time.monotonic() - started) / 60:.1f} min", "",
                 "## In-process onnxruntime floor (session.run alone, 1 intra-op thread)", "",
                 *inprocess_table(list(inproc.values())), "",
                 "## Must-show (routing variant)", "",
                 *must_show(cases, args.floors, inproc, batching), ""]
        for variant in args.variants:
            for floor in args.floors:
                lines += [f"## {variant} vs {floor} floor", "", f"Gateway: {VARIANTS[variant][2]}."
                          f" Floor: {floor_description(floor)}.", "",
                          *variant_table(cases, floor, variant), ""]
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        out.write_text("\n".join(lines))

    try:
        gateway.wait_ready(lambda: get(port, "/readyz")[0] == 200)
        notes += check_routing(port, workloads, args.variants, token)
        for label in wp:
            workload_label, protocol = label.rsplit(" ", 1)
            w = workloads[workload_label]
            scripts: dict[str, Path] = {}
            for variant in args.variants:
                req = make_request(w, protocol, w.model + VARIANTS[variant][0])
                body = work / f"{label}-{variant}.body".replace(" ", "_")
                body.write_bytes(req.body)
                scripts[f"gateway:{variant}"] = write_script(
                    body.with_suffix(".lua"), body, req, token)
            floor_req = make_request(w, protocol, w.model)
            floor_body = work / f"{label}-floor.body".replace(" ", "_")
            floor_body.write_bytes(floor_req.body)
            floor_script = write_script(floor_body.with_suffix(".lua"), floor_body, floor_req,
                                        token)
            for kind in args.floors:
                floors[kind] = start_floor(kind, w.path, work, env)
                scripts[f"floor:{kind}"] = floor_script
            for server in floors.values():
                server.wait_ready(lambda s=server, r=floor_req: post(s.port, r)[0] == 200)
            notes += compare_responses(label, protocol, port, floors, w, args.variants, token)
            ports = {f"floor:{k}": s.port for k, s in floors.items()}
            ports.update({f"gateway:{v}": port for v in args.variants})
            order = interleave([f"floor:{k}" for k in args.floors],
                               [f"gateway:{v}" for v in args.variants])
            for target in order:  # warm-up, not recorded
                wrk(ports[target], scripts[target], 8, WARMUP_SECONDS)
                time.sleep(PAUSE_SECONDS)
            for conc in CONCURRENCY:
                case = Case(workload_label, protocol, conc)
                if case.id not in chosen:
                    continue
                cases.append(case)
                for r in range(args.rounds):
                    results: dict[str, Run] = {}
                    for target in (order if r % 2 == 0 else order[::-1]):
                        results[target] = wrk(ports[target], scripts[target], conc, args.seconds)
                        time.sleep(PAUSE_SECONDS)
                    case.rounds.append(results)
                    for name, server in [("gateway", gateway), *floors.items()]:
                        if not server.alive():
                            raise RuntimeError(f"{name} died during {case.id}:\n{server.tail()}")
                print(progress(case, args.floors, args.variants), flush=True)
                report()
            for server in floors.values():
                server.stop()
            floors.clear()
        notes += metrics_notes(port)
    finally:
        for server in floors.values():
            server.stop()
        gateway.stop()
        if cases:
            report()
    print(out.read_text())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench: done in {(time.monotonic() - started) / 60:.1f} min "
          f"(estimated {total / 60:.1f}); written to {out}"
          + (f"; work files in {work}" if args.keep else ""))


def floor_description(kind: str) -> str:
    if kind == "sync":
        return "bench/floor.py under gunicorn -k sync -w 2 (the reference configuration)"
    return ("bench/floor.py under the gateway's gunicorn config "
            "(-c python:gateway.web.gunicorn_conf, gthread)")


def interleave(floors: list[str], gateways: list[str]) -> list[str]:
    order: list[str] = []
    for i in range(max(len(floors), len(gateways))):
        order += floors[i:i + 1] + gateways[i:i + 1]
    return order


def progress(case: Case, floors: list[str], variants: list[str]) -> str:
    parts = []
    for variant in variants:
        for floor in floors:
            p = case.pair(floor, variant)
            if p is not None:
                flag = " FAILED" if p["errors"] else ""
                parts.append(f"{variant}/{floor}: req/s x{fmt(p['rps_ratio'])} "
                             f"(+{fmt(p['added_p50'], 3)} ms p50){flag}")
    return f"  {case.id}: " + "; ".join(parts)


def check_routing(port: int, workloads: dict[str, Workload], variants: list[str],
                  token: str) -> list[str]:
    """The policy really routes: 200 distinct keys split ~90/10; shadow serves version 1."""
    notes = []
    w = workloads["digits b1"]
    for variant in variants:
        model = w.model + VARIANTS[variant][0]
        req = make_request(w, "predict-json", model)
        served: dict[str, int] = {}
        for i in range(200):
            status, headers, body = post(port, req, {"Authorization": f"Bearer {token}",
                                                     "X-Routing-Key": f"user-{i}"})
            key = headers.get("X-Model-Version", f"status {status}")
            served[key] = served.get(key, 0) + 1
        notes.append(f"{variant}: 200 requests to `{model}` with distinct routing keys were "
                     f"served by versions {dict(sorted(served.items()))}.")
    return notes


def compare_responses(label: str, protocol: str, port: int, floors: dict[str, Server],
                      w: Workload, variants: list[str], token: str) -> list[str]:
    """One request pinned to version 1 on the gateway vs the floors: same outputs? (/v2 pins
    by path; X-Model-Version is a /predict header.)"""
    notes = []
    floor_req = make_request(w, protocol, w.model)
    answers = {}
    for kind, server in floors.items():
        status, headers, body = post(server.port, floor_req)
        answers[f"floor {kind}"] = (status, headers, body)
    for variant in variants:
        req = make_request(w, protocol, w.model + VARIANTS[variant][0])
        if protocol != "predict-json":
            req = replace(req, path=req.path.replace("/infer", "/versions/1/infer"))
        answers[f"gateway {variant}"] = post(port, req, {"Authorization": f"Bearer {token}",
                                                        "X-Model-Version": "1"})
    reference = None
    sizes = []
    for who, (status, headers, body) in answers.items():
        sizes.append(f"{who} {len(body)} B")
        if status != 200:
            notes.append(f"{label}: {who} answered {status}: {body[:200]!r}")
            continue
        outputs = decode_outputs(protocol, headers, body)
        if reference is None:
            reference = (who, outputs)
            continue
        diff = same_outputs(reference[1], outputs)
        if diff:
            notes.append(f"{label}: {who} differs from {reference[0]}: {diff}")
    notes.append(f"{label}: response sizes: {', '.join(sizes)}.")
    return notes


def metrics_notes(port: int) -> list[str]:
    """Shadow copies run and dropped, and requests per onnxruntime run where batching is on."""
    status, text = get(port, "/metrics")
    if status != 200:
        return [f"/metrics answered {status}"]
    totals: dict[tuple[str, str], float] = {}
    for line in text.decode().splitlines():
        found = re.match(r"(gateway_shadow_runs_total|gateway_shadow_dropped_total|"
                         r"gateway_batch_requests_count|gateway_batch_requests_sum)"
                         r"\{([^}]*)\}\s+(\S+)$", line)
        if found:
            model = re.search(r'model="([^"]*)"', found.group(2))
            key = (found.group(1), model.group(1) if model else "?")
            totals[key] = totals.get(key, 0.0) + float(found.group(3))
    notes = []
    shadows = {k: v for k, v in totals.items() if k[0].startswith("gateway_shadow")}
    if shadows:
        notes.append("shadow copies over the whole run (/metrics): " + ", ".join(
            f"{model} {kind.split('_')[2]} {value:.0f}"
            for (kind, model), value in sorted(shadows.items()))
            + " (dropped: the shadow queue was full; the caller was not slowed, the copy not"
              " run)")
    for (kind, model), runs in sorted(totals.items()):
        if kind == "gateway_batch_requests_count" and runs:
            merged = totals.get(("gateway_batch_requests_sum", model), 0.0)
            notes.append(f"batching {model}: {merged:.0f} requests in {runs:.0f} onnxruntime "
                         f"runs, {merged / runs:.2f} requests per run on average (/metrics)")
    return notes


if __name__ == "__main__":
    main()

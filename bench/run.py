"""Gateway vs floor with wrk, interleaved in one invocation; writes a markdown table of ratios.

For each case the floor and the gateway are measured alternately for `--rounds` rounds (so the
machine's drift hits both alike) and the median of the per-round ratios is reported. The
gateway runs as a user would run it: `gateway serve` (2 gthread workers), auth on, outcome
logging on, a 90/10 policy and sticky routing keys (and, in the `shadow` variant, a 100% shadow
of the other version). Loopback only; every wrk run is bounded by `--seconds`.

    make bench            # or: .venv/bin/python -m bench.run --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from tests.server import free_port

LUA = """
wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-Routing-Key"] = "user-" .. (counter % 1000)
  return wrk.format(nil, "{path}")
end
"""


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, script: Path, connections: int, seconds: int) -> tuple[float, float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url], capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx responses in the run:\n{out}")
    return rps, ms("50"), ms("99")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/latest.md")
    args = parser.parse_args()
    from bench.mlp import build_mlp
    from models.examples import build_examples, load_test_split

    work = Path(tempfile.mkdtemp(prefix="mgw-bench-"))
    build_examples(work / "digits")
    X, _ = load_test_split(work / "digits")
    mlp = build_mlp(work / "mlp.onnx")
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"sqlite:///{work}/gw.db",
           "GATEWAY_MODEL_STORE": str(work / "store"), "GATEWAY_STATE_DIR": str(work / "state")}
    env.pop("GATEWAY_REDIS_URL", None)
    gw = [sys.executable, "-m", "gateway.cli"]

    def cli(*argv: str) -> str:
        return subprocess.run(gw + list(argv), env=env, cwd=work, check=True,
                              capture_output=True, text=True).stdout

    cli("db", "upgrade")
    for path in (work / "digits/logreg.onnx", work / "digits/mlp.onnx"):
        cli("models", "register", "digits", str(path))
    mlp_twin = work / "mlp2.onnx"
    build_mlp(mlp_twin, seed=1)
    cli("models", "register", "mlp", str(mlp))
    cli("models", "register", "mlp", str(mlp_twin))
    token = cli("token", "create", "--role", "ops", "--name", "bench").strip().splitlines()[-1]
    rng = np.random.default_rng(0)
    cases = [
        ("digits", "digits b1 c1", X[:1], 1, work / "digits/logreg.onnx"),
        ("digits", "digits b1 c8", X[:1], 8, work / "digits/logreg.onnx"),
        ("mlp", "mlp b1 c32", rng.standard_normal((1, 512)), 32, mlp),
        ("mlp", "mlp b32 c8", rng.standard_normal((32, 512)), 8, mlp),
    ]
    rows = []
    port = free_port()
    gateway = subprocess.Popen(gw + ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                               env=env, cwd=work, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz")
        for variant in ("routing", "shadow"):
            for model, label, x, conns, floor_model in cases:
                policy = ["1=90", "2=10"] if variant == "routing" else [
                    "1=100", "--shadow", "2=100"]
                cli("traffic", "set", model, *policy, "--reason", f"bench {variant}")
                body = work / f"{label}.json"
                body.write_bytes(orjson.dumps({"model": model, "inputs": x.astype(np.float32)},
                                              option=orjson.OPT_SERIALIZE_NUMPY))
                script = work / f"{label}.lua"
                script.write_text(LUA.format(body=body, token=token, path="/predict"))
                fport = free_port()
                floor = subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", "python:gateway.gunicorn_conf",
                     "--bind", f"127.0.0.1:{fport}", "bench.floor:app"],
                    env={**env, "BENCH_MODEL": str(floor_model)}, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                try:
                    time.sleep(2)
                    ratios: list[tuple[float, float, float]] = []
                    for _ in range(args.rounds):
                        f = wrk(f"http://127.0.0.1:{fport}/predict", script, conns, args.seconds)
                        g = wrk(f"http://127.0.0.1:{port}/predict", script, conns, args.seconds)
                        ratios.append((g[0] / f[0], g[1] / f[1], g[2] / f[2]))
                        last = (f, g)
                finally:
                    floor.terminate()
                    floor.wait(30)
                med = [statistics.median(r[i] for r in ratios) for i in range(3)]
                rows.append(f"| {label} | {variant} | {last[0][0]:.0f} | {last[1][0]:.0f} | "
                            f"{med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")
                print(rows[-1], flush=True)
    finally:
        gateway.terminate()
        gateway.wait(60)
    table = ["| case | gateway mode | floor req/s | gateway req/s | req/s ratio | p50 ratio | "
             "p99 ratio |", "| --- | --- | --- | --- | --- | --- | --- |", *rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()

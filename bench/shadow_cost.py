"""What a CPU-heavy 100% shadow costs the caller, measured with wrk against one gateway.

One `gateway serve` (2 sync workers, auth and outcome logging on) serves the digits logistic
regression as version 1. Version 2 is a deliberately slow model with the same signature
(`tests.onnx_factory.slow_digits_model`, tens of milliseconds per row). Each round measures
the caller's latency twice with wrk at concurrency 1: with the policy `1=100` and with
`1=100 --shadow 2=100`, alternating which goes first. Reported: median over rounds of the
per-round ratio shadow/plain for p50, p99 and req/s, and how many copies ran or were dropped.

This is the measurement behind the README's "a 100% heavy shadow costs the caller ..." line;
the test suite only asserts the behaviour (the caller never waits for the shadow), because a
latency ratio on a shared 2-core machine is too noisy for a pass/fail test.

    .venv/bin/python -m bench.shadow_cost --seconds 5 --rounds 3
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
from pathlib import Path

import orjson

from bench.inprocess import build_workloads
from bench.run import Request, Server, get, machine_info, write_script, wrk
from tests.onnx_factory import slow_digits_model
from tests.server import free_port


def shadow_counts(port: int) -> tuple[float, float]:
    """(runs, dropped) of shadow copies summed over workers, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    _, body = get(port, "/metrics")
    runs = dropped = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "gateway_shadow_runs_total":
                runs += sample.value
            elif sample.name == "gateway_shadow_dropped_total":
                dropped += sample.value
    return runs, dropped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, choices=range(1, 16))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=128,
                        help="depth of the slow shadow model (128: about 9 ms a row)")
    args = parser.parse_args(argv)
    command = argv if argv is not None else sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="mgw-shadow-"))
    digits = next(w for w in build_workloads(work) if w.model == "digits")
    slow = work / "slow.onnx"
    slow.write_bytes(slow_digits_model(layers=args.layers))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATABASE_URL": f"sqlite:///{work}/gw.db",
                "GATEWAY_MODEL_STORE": str(work / "store"),
                "GATEWAY_STATE_DIR": str(work / "state"), "GATEWAY_WORKERS": "2"})
    gw_cli = [sys.executable, "-m", "gateway.cli.main"]

    def cli(*argv_: str) -> str:
        return subprocess.run(gw_cli + list(argv_), env=env, cwd=work, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    cli("db", "upgrade")
    cli("models", "register", "digits", str(digits.path))
    cli("models", "register", "digits", str(slow))
    token = cli("token", "create", "--role", "app", "--name", "bench").strip().splitlines()[-1]
    body = work / "body.json"
    body.write_bytes(orjson.dumps({"model": "digits", "inputs": {digits.input_name: digits.x}},
                                  option=orjson.OPT_SERIALIZE_NUMPY))
    script = write_script(work / "predict.lua", body,
                          Request("/predict", b"", {"Content-Type": "application/json"}), token)
    policies = {"plain": ["1=100"], "shadow": ["1=100", "--shadow", "2=100"]}
    port = free_port()
    server = Server("gateway", gw_cli + ["serve", "--bind", f"127.0.0.1:{port}"], env, work,
                    port, work)
    ratios: dict[str, list[float]] = {"p50": [], "p99": [], "rps": []}
    rows = []
    try:
        server.wait_ready(lambda: get(port, "/healthz")[0] == 200)
        for i in range(args.rounds):
            runs = {}
            for name in (("plain", "shadow") if i % 2 == 0 else ("shadow", "plain")):
                cli("traffic", "set", "digits", *policies[name], "--reason", f"bench {name}")
                time.sleep(1.0)  # every worker has the policy; the shadow queue has drained
                wrk(port, script, 1, 1)  # warm-up
                runs[name] = wrk(port, script, 1, args.seconds)
                if runs[name].errors:
                    sys.exit(f"{name} run failed: {runs[name].errors}")
            plain, shadow = runs["plain"], runs["shadow"]
            ratios["p50"].append(shadow.p50 / plain.p50)
            ratios["p99"].append(shadow.p99 / plain.p99)
            ratios["rps"].append(shadow.rps / plain.rps)
            rows.append(f"| {i + 1} | {plain.p50:.3f} | {shadow.p50:.3f} | {plain.p99:.3f} | "
                        f"{shadow.p99:.3f} | {plain.rps:.0f} | {shadow.rps:.0f} |")
        copies, dropped = shadow_counts(port)
    finally:
        server.stop()
    print("\n".join([
        "# A heavy 100% shadow: what the caller pays", "", *machine_info(),
        f"- command: `{shlex.join(['python', '-m', 'bench.shadow_cost', *command])}`",
        f"- shadow model: {args.layers} layers of 1024x1024 MatMul+Tanh per row", "",
        "| round | plain p50 ms | shadow p50 ms | plain p99 ms | shadow p99 ms | plain req/s "
        "| shadow req/s |", "| --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        f"median per-round ratio shadow/plain: p50 {statistics.median(ratios['p50']):.2f}x, "
        f"p99 {statistics.median(ratios['p99']):.2f}x, req/s "
        f"{statistics.median(ratios['rps']):.2f}x; shadow copies run {copies:.0f}, "
        f"dropped (queue full) {dropped:.0f}"]))


if __name__ == "__main__":
    main()

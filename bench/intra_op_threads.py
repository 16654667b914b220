"""Why GATEWAY_INTRA_OP_THREADS defaults to 1: two worker processes on a 2-core machine.

Runs the benchmark MLP in 2 processes at once (as 2 gunicorn workers would) with 1 and with 2
onnxruntime intra-op threads per session, interleaved for several rounds, and prints the
throughput ratio (threads=2 / threads=1) and per-call p50 latency. Bounded: ~2 s per run.

    .venv/bin/python -m bench.intra_op_threads
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _worker(path: str, threads: int, batch: int, seconds: float, start, out) -> None:
    import onnxruntime as ort

    from registry.inspect_onnx import session_options

    session = ort.InferenceSession(path, sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
    session.run(None, {"input": x})
    start.wait()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    out.put(times)


def run(path: Path, threads: int, batch: int, processes: int = 2, seconds: float = 2.0):
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), threads, batch, seconds, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(1.5)
    start.set()
    samples = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    calls = sum(len(s) for s in samples)
    p50 = statistics.median(t for s in samples for t in s) * 1000
    return calls / seconds, p50


def main() -> None:
    from bench.mlp import build_mlp

    with tempfile.TemporaryDirectory() as tmp:
        path = build_mlp(Path(tmp) / "mlp.onnx")
        print("| batch | threads=1 calls/s | threads=2 calls/s | ratio (2/1) "
              "| p50 ms 1 | p50 ms 2 |")
        print("| --- | --- | --- | --- | --- | --- |")
        for batch in (1, 32):
            ratios, rows = [], []
            for _ in range(3):
                one = run(path, 1, batch)
                two = run(path, 2, batch)
                ratios.append(two[0] / one[0])
                rows.append((one, two))
            one, two = rows[len(rows) // 2]
            print(f"| {batch} | {one[0]:.0f} | {two[0]:.0f} | {statistics.median(ratios):.2f} "
                  f"| {one[1]:.3f} | {two[1]:.3f} |")


if __name__ == "__main__":
    main()

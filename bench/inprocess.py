"""The in-process floor: `session.run` alone, no HTTP, for each benchmark workload.

One onnxruntime session per model with one intra-op thread (`session_options(1)`, as the gateway
and the floor server use), warmed, then timed call by call for a few thousand iterations (fewer
when a workload would take longer than `max_seconds`). Prints a markdown table of p50/p99/mean.

    .venv/bin/python -m bench.inprocess
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Workload:
    label: str            # "digits b1"
    model: str            # registered model name
    path: Path            # version 1's file (what the floors serve)
    twin: Path            # version 2's file (the 10% / the shadow)
    x: np.ndarray         # float32 [batch, features]
    input_name: str = "input"


def build_workloads(work: Path) -> list[Workload]:
    """The digits models (logreg = v1, mlp = v2) and the benchmark MLP (seed 0 = v1, seed 1 = v2)
    with their inputs: digits batch 1, MLP batch 1, MLP batch 32. Fixed seeds throughout."""
    from bench.mlp import build_mlp
    from models.examples import build_examples, load_test_split

    build_examples(work / "digits")
    X, _ = load_test_split(work / "digits")
    mlp, mlp_twin = build_mlp(work / "mlp.onnx"), build_mlp(work / "mlp2.onnx", seed=1)
    rng = np.random.default_rng(0)
    logreg, digits_mlp = work / "digits/logreg.onnx", work / "digits/mlp.onnx"
    return [
        Workload("digits b1", "digits", logreg, digits_mlp, np.ascontiguousarray(X[:1])),
        Workload("mlp b1", "mlp", mlp, mlp_twin,
                 rng.standard_normal((1, 512)).astype(np.float32)),
        Workload("mlp b32", "mlp", mlp, mlp_twin,
                 rng.standard_normal((32, 512)).astype(np.float32)),
    ]


@dataclass(frozen=True)
class InProcess:
    label: str
    iterations: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def measure(workload: Workload, iterations: int = 3000, max_seconds: float = 4.0) -> InProcess:
    import onnxruntime as ort

    from registry.inspect_onnx import session_options

    session = ort.InferenceSession(str(workload.path), sess_options=session_options(1),
                                   providers=["CPUExecutionProvider"])
    feeds = {workload.input_name: workload.x}
    for _ in range(50):
        session.run(None, feeds)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(iterations):
        t0 = time.perf_counter()
        session.run(None, feeds)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > deadline and len(times) >= 300:
            break
    times.sort()
    return InProcess(workload.label, len(times), statistics.median(times) * 1000,
                     times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
                     statistics.fmean(times) * 1000)


def table(rows: list[InProcess]) -> list[str]:
    lines = ["| case | iterations | p50 ms | p99 ms | mean ms |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.label} | {r.iterations} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.mean_ms:.3f} |"
              for r in rows]
    return lines


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mgw-inprocess-") as tmp:
        rows = [measure(w) for w in build_workloads(Path(tmp))]
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()

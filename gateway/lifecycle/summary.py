"""What `models show` says about a version's evaluation: its latest metrics, whether it passes
the gate, and how it compares with its parent on the same dataset.

The comparison with the parent is what makes a derived version (a quantized copy, a retrain)
judgeable at a glance; it is only made on the dataset both were evaluated on, because numbers on
different data do not compare.
"""

from __future__ import annotations

from typing import Any

from gateway.lifecycle.gate import check_gate
from registry import evaluations, service
from registry.db import Database
from registry.records import VersionRecord


def vs_parent(parent: VersionRecord, parent_eval: dict[str, Any], child: VersionRecord,
              child_eval: dict[str, Any]) -> dict[str, Any]:
    """Size and latency of the child as ratios of the parent's, accuracy as a difference; the
    caller passes two evaluations on the same dataset."""
    pm, cm = parent_eval["metrics"], child_eval["metrics"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return {
        "parent_version": parent["version"],
        "dataset": child_eval["dataset"],
        "size_ratio": ratio(child["size_bytes"], parent["size_bytes"]),
        "latency_p50_ratio": ratio(cm.get("latency_p50_ms"), pm.get("latency_p50_ms")),
        "accuracy_delta": delta(cm.get("accuracy"), pm.get("accuracy")),
        "log_loss_delta": delta(cm.get("log_loss"), pm.get("log_loss")),
        "parent": {"size_bytes": parent["size_bytes"], "accuracy": pm.get("accuracy"),
                   "latency_p50_ms": pm.get("latency_p50_ms"), "evaluation": parent_eval["id"]},
        "child": {"size_bytes": child["size_bytes"], "accuracy": cm.get("accuracy"),
                  "latency_p50_ms": cm.get("latency_p50_ms"), "evaluation": child_eval["id"]},
    }


def version_summary(db: Database, model: str, record: VersionRecord) -> dict[str, Any]:
    """`evaluation`, `gate` and `vs_parent` of a version record (each None when there is
    nothing to say)."""
    latest = evaluations.latest_evaluation(db, model, record["version"])
    gate = check_gate(db, model, record["version"])
    comparison = None
    parent_number = record.get("parent_version")
    if latest is not None and parent_number is not None:
        parent_eval = evaluations.latest_evaluation(db, model, parent_number,
                                                    latest["dataset"]["sha256"])
        if parent_eval is not None:
            parent = service.get_version(db, model, parent_number)
            comparison = vs_parent(parent, parent_eval, record, latest)
    return {"evaluation": latest, "gate": gate.to_dict() if gate else None,
            "vs_parent": comparison}


def version_view(db: Database, model: str, ref: str | int) -> dict[str, Any]:
    """A version as `gateway models show NAME V` and `GET /admin/models/{name}/versions/{v}`
    show it: the record, the model's micro-batching, and the summary above."""
    record = service.get_version(db, model, ref)
    batching = service.get_batching(db, model)
    return {**record, "batching": ({"max_batch": batching["max_batch"],
                                    "max_wait_us": batching["max_wait_us"]}
                                   if batching["enabled"] else None),
            **version_summary(db, model, record)}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def evaluation_line(evaluation: dict[str, Any]) -> str:
    m, d = evaluation["metrics"], evaluation["dataset"]
    return (f"accuracy {_fmt(m.get('accuracy'), '.4f')}, log loss {_fmt(m.get('log_loss'), '.4f')}"
            f", latency p50 {_fmt(m.get('latency_p50_ms'), '.3f')} ms p99 "
            f"{_fmt(m.get('latency_p99_ms'), '.3f')} ms on dataset {d['name']} "
            f"{d['sha256'][:12]} ({d['rows']} rows; evaluation {evaluation['id']})")


def vs_parent_line(comparison: dict[str, Any]) -> str:
    """e.g. `vs parent 3: size 0.40x, latency p50 1.12x, accuracy +0.0022 on dataset 1a2b..`"""
    return (f"vs parent {comparison['parent_version']}: size "
            f"{_fmt(comparison['size_ratio'], '.2f')}x, latency p50 "
            f"{_fmt(comparison['latency_p50_ratio'], '.2f')}x, accuracy "
            f"{_fmt(comparison['accuracy_delta'], '+.4f')} on dataset "
            f"{comparison['dataset']['sha256'][:12]}")


def gate_line(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "no gate"
    if gate["passed"]:
        return f"passed ({'; '.join(gate['rules'])})"
    return "failed: " + "; ".join(gate["failures"])


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The lines `models show NAME VERSION` prints for a version's evaluation."""
    evaluation = summary.get("evaluation")
    lines = [f"evaluation: {evaluation_line(evaluation) if evaluation else 'none yet'}",
             f"gate: {gate_line(summary.get('gate'))}"]
    if summary.get("vs_parent"):
        lines.append(vs_parent_line(summary["vs_parent"]))
    return lines

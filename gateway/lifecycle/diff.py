"""What changed between two versions of a model: `gateway models diff` and
`GET /admin/models/{name}/diff`.

A reviewer deciding whether a candidate may take traffic wants the differences only: the
signature, the opset, the file (size, sha256), the data and parameters it was trained with,
its recorded metrics, its parent, and how its latest evaluation and the gate judged it.
Fields that are equal are left out, so an empty `changes` means the two are the same model.
"""

from __future__ import annotations

from typing import Any

from gateway.lifecycle.gate import check_gate
from registry import service
from registry.db import Database
from registry.evaluations import latest_evaluation
from registry.records import VersionRecord

RECORD_FIELDS = ("inputs", "outputs", "opset", "size_bytes", "sha256", "dataset", "params",
                 "metrics", "parent_version")


def _view(db: Database, name: str, record: VersionRecord) -> dict[str, Any]:
    view: dict[str, Any] = {field: record[field] for field in RECORD_FIELDS}  # type: ignore[literal-required]
    evaluation = latest_evaluation(db, name, record["version"])
    view["evaluation"] = None if evaluation is None else {
        "id": evaluation["id"], "dataset": evaluation["dataset"],
        "metrics": {k: v for k, v in (evaluation["metrics"] or {}).items()
                    if not isinstance(v, dict | list)}}
    gate = check_gate(db, name, record["version"])
    view["gate"] = None if gate is None else {"passed": gate.passed, "failures": gate.failures}
    return view


def diff_versions(db: Database, name: str, a_ref: str | int, b_ref: str | int
                  ) -> dict[str, Any]:
    """`{"model", "a", "b", "changes": {field: {"a": ..., "b": ...}}}`; versions may be given
    as numbers or aliases (404 for either that does not exist)."""
    a = service.get_version(db, name, a_ref)
    b = service.get_version(db, name, b_ref)
    va, vb = _view(db, name, a), _view(db, name, b)
    changes = {field: {"a": va[field], "b": vb[field]} for field in va if va[field] != vb[field]}
    return {"model": name, "a": a["version"], "b": b["version"], "changes": changes}


def diff_text(d: dict[str, Any]) -> str:
    """The table `gateway models diff` prints for people."""
    if not d["changes"]:
        return f"{d['model']}: versions {d['a']} and {d['b']} do not differ"
    lines = [f"{d['model']}: version {d['a']} -> version {d['b']}"]
    for field, change in d["changes"].items():
        lines.append(f"  {field}: {_short(change['a'])} -> {_short(change['b'])}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    import orjson

    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."

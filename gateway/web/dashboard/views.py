"""What the dashboard page shows, as plain data for its templates: policies, comparisons,
versions and the traffic form's state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.outcomes.comparison import compare
from gateway.services import Services
from gateway.web.dashboard.charts import (
    Window,
    fmt_count,
    fmt_ms,
    fmt_pct,
    fmt_plain,
    primary_charts,
    shadow_chart,
    share_bar,
    version_colour,
)
from gateway.web.dashboard.drift import drift_view
from gateway.web.dashboard.lineage import lineage_svg
from gateway.web.dashboard.rollouts import rollout_view
from registry import timeseries
from registry.errors import GatewayError
from registry.records import PolicyRecord

HISTORY_LIMIT = 20

# ---------------------------------------------------------------------------------------------
# Page data
# ---------------------------------------------------------------------------------------------


def fmt_when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shares(weights: Mapping[str, int]) -> list[dict[str, Any]]:
    total = sum(weights.values())
    return [{"version": ref, "weight": w, "share": fmt_pct(w / total) if total else "—"}
            for ref, w in weights.items()]


def _policy_view(policy: PolicyRecord) -> dict[str, Any]:
    return {
        "revision": policy["revision"],
        "action": policy.get("action"),
        "weights": _shares(policy["weights"]),
        "shadow": [{"version": ref, "percent": p} for ref, p in policy["shadow"].items()],
        "updated_at": fmt_when(policy.get("updated_at")),
        "updated_by": policy.get("updated_by") or "—",
        "reason": policy.get("reason") or "",
        "bar": share_bar(policy["weights"]),
    }


def _interval(pair: list[float] | None, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if pair else ""


def _comparison_view(result: dict[str, Any]) -> dict[str, Any]:
    """The all-time comparison, formatted for a table (numbers stay exact in the API)."""
    rows = []
    for entry in result["versions"]:
        latency = entry["latency_ms"]
        accuracy, reward, versus = entry["accuracy"], entry["reward"], entry["vs_champion"]
        rows.append({
            "version": entry["version"],
            "requests": fmt_count(entry["requests"]),
            "errors": f"{entry['errors']} ({fmt_pct(entry['error_rate'] or 0.0)})",
            "latency": " / ".join(fmt_ms(latency[k]) if k in latency else "—"
                                  for k in ("p50", "p95", "p99")),
            "feedback": entry["feedback"],
            "accuracy": (f"{fmt_pct(accuracy['value'])} {_interval(accuracy['ci95'], fmt_pct)}"
                         f" n={accuracy['n']}" if accuracy else "—"),
            "reward": (f"{reward['mean']:.4g} {_interval(reward['ci95'], fmt_plain)} "
                       f"n={reward['n']}" if reward else "—"),
            "versus": _versus_text(versus),
        })
    shadow = [{
        "version": item["version"], "primary_version": item["primary_version"],
        "compared": item["compared"], "errors": item["errors"],
        "agreement": (f"{fmt_pct(item['agreement'])} {_interval(item['ci95'], fmt_pct)}"
                      if item["agreement"] is not None else "—"),
    } for item in result["shadow"]]
    champion = result["champion"]
    return {"rows": rows, "shadow": shadow,
            "champion": (f"v{champion['version']} ({champion['source'].replace('_', ' ')})"
                         if champion else None)}


def _versus_text(versus: dict[str, Any] | None) -> str:
    if not versus:
        return "—"
    parts = []
    if versus["accuracy"]:
        parts.append(f"accuracy {versus['accuracy']['difference'] * 100:+.1f} pts, "
                     f"p={versus['accuracy']['p_value']:.3g}")
    if versus["reward"]:
        parts.append(f"reward {versus['reward']['difference']:+.4g}, "
                     f"p={versus['reward']['p_value']:.3g}")
    return "; ".join(parts) or "not enough feedback"


def _versions_view(versions: list[dict[str, Any]], policy: PolicyRecord | None
                   ) -> list[dict[str, Any]]:
    """Versions with lineage (parent, children) worked out from the one list, no extra query."""
    weights = policy["weights"] if policy else {}
    shadow = policy["shadow"] if policy else {}
    total = sum(weights.values())
    out = []
    for v in versions:
        number = v["version"]
        dataset = v.get("dataset") or {}
        out.append({
            "version": number, "colour": version_colour(number), "stage": v["stage"],
            "aliases": v["aliases"], "sha256": v["sha256"], "sha_short": v["sha256"][:12],
            "created_at": fmt_when(v["created_at"]), "created_by": v["created_by"],
            "description": v.get("description") or "",
            "dataset": " ".join([*(str(dataset[k]) for k in ("name", "version") if dataset.get(k)),
                                 *([f"sha256 {str(dataset['sha256'])[:12]}"]
                                   if dataset.get("sha256") else [])]),
            "metrics": [f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                        for k, val in sorted((v.get("metrics") or {}).items())],
            "parent": v["parent_version"], "params": v.get("params") or {},
            "children": [c["version"] for c in versions if c["parent_version"] == number],
            "archived": v["stage"] == "archived", "archived_reason": v.get("archived_reason"),
            "share": fmt_pct(weights[str(number)] / total) if str(number) in weights and total
            else "", "shadow": shadow.get(str(number)),
        })
    return out


@dataclass
class FormState:
    """What a policy form shows: the live policy, or what the person typed when it failed."""

    weights: dict[str, str] = field(default_factory=dict)
    shadow: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Failure:
    """A refused change to re-render: the message, and the typed values when worth keeping
    (a validation error); after a conflict the form shows the live policy instead, so that a
    stale form cannot be resubmitted with one click."""

    model: str
    message: str
    typed: FormState | None


def _form_from_policy(policy: PolicyRecord | None) -> FormState:
    if policy is None:
        return FormState()
    return FormState(weights={k: str(v) for k, v in policy["weights"].items()},
                     shadow={k: str(v) for k, v in policy["shadow"].items()})


def form_from_request(form: Mapping[str, str]) -> FormState:
    state = FormState(reason=form.get("reason", ""))
    for key, value in form.items():
        kind, _, ref = key.partition("-")
        if kind == "weight":
            state.weights[ref] = value
        elif kind == "shadow":
            state.shadow[ref] = value
    return state


def _form_state(policy: PolicyRecord | None, name: str, failed: Failure | None
                ) -> FormState:
    if failed is None or failed.model != name:
        return _form_from_policy(policy)
    state = failed.typed or _form_from_policy(policy)
    state.error = failed.message
    return state


def model_view(svc: Services, record: dict[str, Any], window: Window,
                failed: Failure | None) -> dict[str, Any]:
    name = record["model"]
    policy_error = None
    try:
        policy: PolicyRecord | None = svc.traffic.show(name)
    except GatewayError as exc:
        policy, policy_error = None, exc.message
    history = svc.traffic.history(name, HISTORY_LIMIT)
    primary = timeseries.primary_series(svc.db, name, window.since, window.until,
                                        window.axis.step)
    shadow = timeseries.shadow_series(svc.db, name, window.since, window.until,
                                      window.axis.step)
    versions = _versions_view(record["versions"], policy)
    return {
        "name": name,
        "versions": versions,
        "lineage": lineage_svg(versions),
        "form_versions": [v["version"] for v in record["versions"] if v["stage"] != "archived"],
        "policy": _policy_view(policy) if policy and policy["revision"] else None,
        "revision": policy["revision"] if policy else 0,
        "policy_error": policy_error,
        "history": [_policy_view(h) for h in history],
        "charts": [*primary_charts(primary, window.axis), shadow_chart(shadow, window.axis)],
        "comparison": _comparison_view(compare(svc.db, name, None, None)),
        "form": _form_state(policy, name, failed),
        "drift": drift_view(name, svc.drift),
        "rollout": rollout_view(svc.db, name),
    }

"""`gateway rollout start|status|pause|resume|abort`: progressive rollouts on outcomes.

The CLI starts, pauses and ends rollouts; the steps in between are taken by the rollout
controller that runs inside every `gateway serve` worker, so a rollout only moves while a
gateway is serving (and sending it outcomes).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import CliError, Context, emit, over_http
from gateway.lifecycle.rollout import Rollouts


def _rollouts(ctx: Context) -> Rollouts:
    return ctx.services.rollouts


def _steps(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise CliError(f"--steps must be percents separated by commas, e.g. 5,25,50,100; "
                       f"got {value!r}") from None


def _text(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        f"{r['model']} rollout {r['id']}: {r['state']}, candidate {r['candidate']} at "
        f"{r['weight']}% (step {r['step_index'] + 1} of {len(r['steps'])}: "
        f"{','.join(map(str, r['steps']))}) against baseline {r['baseline']}",
        f"  metric {p['metric']}, min {p['min_samples']} samples per step, max regression "
        f"{p['max_regression']:g}, max error rate {p['max_error_rate']:g}, max p99 "
        f"{p['max_p99_ms'] if p['max_p99_ms'] is not None else '-'} ms, alpha {p['alpha']:g}",
        f"  started {r['started_at']} by {r['created_by']}; step since {r['step_started_at']}"
        + (f"; finished {r['finished_at']}" if r["finished_at"] else ""),
    ]
    last = r.get("last_decision") or {}
    if last:
        lines.append(f"  last decision: {last.get('action')}: {last.get('reason')}")
        diff = last.get("difference")
        if diff:
            lines.append(f"    {p['metric']} difference {diff['estimate']:+.4f}, always-valid "
                         f"interval [{diff['lower']:+.4f}, {diff['upper']:+.4f}]")
    for d in r.get("decisions", []):
        lines.append(f"  {d['ts']}  {d['action']:<18} {d['actor']}: "
                     f"{(d['detail'] or {}).get('reason') or d['reason'] or '-'}")
    return "\n".join(lines)


@over_http
def cmd_start(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.rollout_start(args.name, rollout_body(args, args.candidate)),
         _text)


def rollout_body(args: argparse.Namespace, candidate: str | int) -> dict[str, Any]:
    """The `POST /admin/models/{name}/rollout` body from the options `rollout_options` adds."""
    body: dict[str, Any] = {"candidate": candidate, "steps": _steps(args.steps),
                            "metric": args.metric, "min_samples": args.min_samples,
                            "max_regression": args.max_regression,
                            "max_error_rate": args.max_error_rate, "alpha": args.alpha}
    for key in ("baseline", "max_p99_ms", "reason"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    if getattr(args, "force", False):
        body["force"] = True
    return body


def rollout_options(p: argparse.ArgumentParser) -> None:
    """The rollout's plan: shared by `rollout start` and `deliver`."""
    p.add_argument("--baseline", help="default: the version serving now (champion first)")
    p.add_argument("--steps", default="5,25,50,100", help="candidate percents (default "
                                                           "5,25,50,100)")
    p.add_argument("--min-samples", type=int, default=200,
                   help="labelled (or rewarded) outcomes of the candidate per step")
    p.add_argument("--metric", choices=["accuracy", "reward"], default="accuracy")
    p.add_argument("--max-regression", type=float, default=0.01,
                   help="how much worse than the baseline the candidate may be")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--max-p99-ms", type=float)
    p.add_argument("--alpha", type=float, default=0.05,
                   help="bound on the chance of a false rollback over all looks")



@over_http
def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.rollout_status(args.name), _text)


@over_http
def cmd_pause(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.rollout_change(args.name, "pause", args.reason), _text)


@over_http
def cmd_resume(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.rollout_change(args.name, "resume", args.reason), _text)


@over_http
def cmd_abort(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.rollout_change(args.name, "abort", args.reason), _text)


def add_commands(sub: Any, add: Any) -> None:
    """Add `gateway rollout ...` to the top-level parser."""
    group = sub.add_parser("rollout", help="progressive rollouts on outcomes").add_subparsers(
        dest="sub", required=True)
    p = add(group, "start", cmd_start, "start moving traffic to a candidate step by step",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("--candidate", required=True, help="version number or alias")
    rollout_options(p)
    p.add_argument("--reason")
    p.add_argument("--force", action="store_true",
                   help="give the candidate traffic even if it fails the evaluation gate "
                        "(needs --reason; audited)")
    for name, func, help_ in (("status", cmd_status, "a rollout's state and its decisions"),
                              ("pause", cmd_pause, "stop the controller acting"),
                              ("resume", cmd_resume, "re-apply the current step and go on"),
                              ("abort", cmd_abort, "end it and restore the previous policy")):
        p = add(group, name, func, help_, json_flag=True)
        p.add_argument("name")
        if name != "status":
            p.add_argument("--reason")

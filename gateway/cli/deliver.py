"""`gateway deliver`: the whole CI/CD path for a newly trained model, for pipelines.

register (with its dataset and params) -> evaluate on the held-out set -> stop if the gate
refuses -> shadow beside the current traffic -> progressive rollout against the serving
version -> wait for the rollout controller's verdict -> move `champion` on promotion.
Every step is printed as it happens and the new version's audit trail at the end. Exit
codes (API.md): 0 promoted, 3 refused by the gate (no traffic given), 4 rolled back,
5 no verdict within `--timeout` (rollout aborted, the policy from before restored), 2 any
other error. It runs against the local stores or, with `--url`/`--token`, a gateway over HTTP.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.cli.common import CliError, CommandExit, Context, over_http
from gateway.cli.rollout import rollout_body, rollout_options
from gateway.lifecycle import summary

EXIT_PROMOTED, EXIT_GATE, EXIT_ROLLED_BACK, EXIT_TIMEOUT = 0, 3, 4, 5
FINISHED = ("completed", "rolled_back", "aborted")


def say(text: str) -> None:
    print(f"deliver: {text}", flush=True)


@over_http
def cmd_deliver(ctx: Context, args: argparse.Namespace) -> None:
    if args.timeout <= 0 or args.poll <= 0:
        raise CliError("--timeout and --poll must be positive seconds")
    metadata = None
    if args.metadata:
        try:
            metadata = orjson.loads(args.metadata)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--metadata is not valid JSON: {exc}") from None
    backend, name = ctx.backend, args.name
    record = backend.register(name, Path(args.file), metadata)
    version = int(record["version"])
    say(f"registered {name} version {version} (sha256 {record['sha256'][:12]})")
    evaluation = backend.evaluate(name, str(version), Path(args.dataset))
    say(f"evaluated on {evaluation['dataset']['name']}: {summary.evaluation_line(evaluation)}")
    gate = evaluation.get("gate")
    if gate is not None and not gate["passed"]:
        say("refused by the gate: " + "; ".join(gate["failures"]))
        _audit_trail(ctx, name, version)
        raise CommandExit(EXIT_GATE)
    say("the gate passes" if gate else "no gate on this model")
    before = backend.traffic_show(name)
    if before["weights"] and args.shadow > 0:
        shadow = {**before["shadow"], str(version): args.shadow}
        backend.traffic_set(name, {"weights": before["weights"], "shadow": shadow,
                                   "reason": f"deliver: shadow version {version}"}, None)
        say(f"version {version} shadows {args.shadow:g}% of the traffic")
    rollout = backend.rollout_start(name, rollout_body(args, version) | {
        "reason": f"deliver: roll out version {version}"})
    say(f"rollout {rollout['id']} started: {version} at {rollout['weight']}% against "
        f"baseline {rollout['baseline']}, steps {','.join(map(str, rollout['steps']))}")
    final = _wait(ctx, name, rollout, args)
    if final is None:
        backend.rollout_change(name, "abort", f"deliver: no verdict within {args.timeout:g} s")
        backend.traffic_set(name, {"weights": before["weights"], "shadow": before["shadow"],
                                   "reason": f"deliver: version {version} timed out; the "
                                             "policy from before"}, None)
        say(f"no verdict within {args.timeout:g} s: rollout aborted, previous policy restored")
        _audit_trail(ctx, name, version)
        raise CommandExit(EXIT_TIMEOUT)
    if final["state"] == "completed":
        backend.set_alias(name, "champion", str(version), f"deliver: version {version} promoted")
        say(f"promoted: version {version} takes all traffic and is the champion")
        _audit_trail(ctx, name, version)
        return
    last = (final.get("last_decision") or {}).get("reason") or final["state"]
    say(f"{final['state'].replace('_', ' ')}: {last}")
    _audit_trail(ctx, name, version)
    raise CommandExit(EXIT_ROLLED_BACK)


def _wait(ctx: Context, name: str, rollout: dict[str, Any], args: argparse.Namespace
          ) -> dict[str, Any] | None:
    """Poll the rollout until it finishes (its record) or the timeout passes (None)."""
    deadline = time.monotonic() + args.timeout
    seen = (rollout["step_index"], rollout["state"])
    while time.monotonic() < deadline:
        time.sleep(min(args.poll, max(0.0, deadline - time.monotonic())))
        current = ctx.backend.rollout_status(name)
        if current["id"] != rollout["id"]:
            raise CliError(f"rollout {rollout['id']} was replaced by {current['id']}")
        if (current["step_index"], current["state"]) != seen:
            seen = (current["step_index"], current["state"])
            say(f"rollout {current['id']}: {current['state']}, version {current['candidate']} "
                f"at {current['weight']}%")
        if current["state"] in FINISHED:
            return current
    return None


def _audit_trail(ctx: Context, name: str, version: int) -> None:
    entries = [e for e in ctx.backend.audit(name, 200)
               if e["version"] in (version, None) or e["action"].startswith("rollout")]
    say(f"audit trail of {name} version {version}:")
    for entry in reversed(entries[:50]):
        print(f"  {entry['ts']}  {entry['action']:<20} {entry['actor']}: "
              f"{entry['reason'] or '-'}", flush=True)


def add_command(sub: Any, add: Any) -> None:
    p = add(sub, "deliver", cmd_deliver,
            "register, evaluate, gate, shadow, roll out and promote a new model version "
            "(exit 0 promoted, 3 gate, 4 rolled back, 5 timeout)")
    p.add_argument("name")
    p.add_argument("file", help="the newly trained .onnx file")
    p.add_argument("--dataset", required=True, metavar="HOLDOUT",
                   help="the held-out set (.npz with X and y, or .csv with a label column)")
    p.add_argument("--metadata", help="JSON object: dataset (name, version, sha256), params, "
                                      "metrics, description, parent_version")
    p.add_argument("--shadow", type=float, default=100.0, metavar="PERCENT",
                   help="shadow percent before the rollout (0: none)")
    rollout_options(p)
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds to wait for the verdict (default 3600)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between looks")

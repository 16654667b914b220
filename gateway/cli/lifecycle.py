"""`gateway models evaluate|gate|quantize`: the evaluation gate and compression commands.

Evaluation and quantization run in this process, on the registry's own artifacts, so they need
the database and the model store, not a running gateway.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError, Context, emit, format_table, over_http
from gateway.lifecycle import summary
from registry.records import VersionRecord


def _dataset(ctx: Context, path: str, record: VersionRecord) -> Any:
    from gateway.lifecycle.datasets import load_dataset
    from gateway.lifecycle.evaluation import single_input_name

    return load_dataset(path, ctx.settings.max_model_bytes, single_input_name(record))


def _per_class_table(metrics: dict[str, Any]) -> str:
    return format_table(
        ["class", "precision", "recall", "support"],
        [[cls, f"{c['precision']:.4f}", f"{c['recall']:.4f}", c["support"]]
         for cls, c in sorted(metrics["per_class"].items(), key=lambda kv: int(kv[0]))])


def evaluation_text(r: dict[str, Any]) -> str:
    """`gateway models evaluate` for people, from the evaluation with its gate verdict."""
    return "\n".join([
        f"{r['model']} version {r['version']}: {summary.evaluation_line(r)}",
        f"  rows/s (batched): {r['metrics']['rows_per_s']:.0f}",
        f"  gate: {summary.gate_line(r['gate'])}",
        _per_class_table(r["metrics"])])


def gate_text(d: dict[str, Any]) -> str:
    """`gateway models gate` for people."""
    if not d["rules"]:
        return f"{d['model']}: no gate (any version may take traffic)"
    lines = [f"{d['model']} gate: {'; '.join(d['rules'])}"]
    lines += [f"  version {s['version']}: {summary.gate_line(s)}" for s in d["versions"]]
    return "\n".join(lines)


@over_http
def cmd_models_evaluate(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.evaluate(args.name, args.version, Path(args.dataset)),
         evaluation_text)


@over_http
def cmd_models_gate(ctx: Context, args: argparse.Namespace) -> None:
    from gateway.lifecycle.gate import normalise_rules

    change = bool(args.rule or args.clear)
    if change and (not args.reason or not args.reason.strip()):
        raise CliError("changing a gate needs --reason (it is audited)")
    rules = None if args.clear else normalise_rules(args.rule) if args.rule else None
    emit(args, ctx.backend.gate(args.name, rules, change, args.reason), gate_text)


@over_http
def cmd_models_quantize(ctx: Context, args: argparse.Namespace) -> None:
    result = ctx.backend.quantize(args.name, args.version,
                                  Path(args.dataset) if args.dataset else None)

    def text(r: dict[str, Any]) -> str:
        q = r["quantization"]
        parent, evals = q["parent"], q["evaluations"]
        return "\n".join([
            f"registered {r['model']} version {r['version']} (INT8 dynamic "
            f"quantization of version {parent['version']}, sha256 {r['sha256']})",
            f"  parent {parent['version']}: {parent['size_bytes']} bytes, "
            f"{summary.evaluation_line(evals['parent'])}",
            f"  child {r['version']}: {r['size_bytes']} bytes, "
            f"{summary.evaluation_line(evals['child'])}",
            f"  {summary.vs_parent_line(q['vs_parent'])}"])

    emit(args, result, text)


@over_http
def cmd_models_diff(ctx: Context, args: argparse.Namespace) -> None:
    from gateway.lifecycle.diff import diff_text

    emit(args, ctx.backend.diff(args.name, args.a, args.b), diff_text)


def add_commands(models: Any, add: Any) -> None:
    """Add this module's subcommands to `gateway models`."""
    p = add(models, "evaluate", cmd_models_evaluate,
            "run a version over a labelled dataset and record its metrics", json_flag=True)
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--dataset", required=True, metavar="FILE",
                   help=".npz with X (or the input's name) and y, or CSV with a label column")
    p = add(models, "gate", cmd_models_gate,
            "show or set the rules a version's evaluation must pass before it takes weight",
            json_flag=True)
    p.add_argument("name")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--rule", action="append", metavar="RULE",
                        help="'METRIC OP NUMBER' or 'METRIC OP champion [+|-] NUMBER'; repeat "
                             "for several (the new gate replaces the old one)")
    change.add_argument("--clear", action="store_true", help="remove the gate")
    p.add_argument("--reason")
    p = add(models, "diff", cmd_models_diff,
            "what changed between two versions (signature, file, data, params, metrics, "
            "parent, latest evaluation and gate verdict)", json_flag=True)
    p.add_argument("name")
    p.add_argument("a", help="a version number or alias")
    p.add_argument("b", help="a version number or alias")
    p = add(models, "quantize", cmd_models_quantize,
            "register an INT8 dynamic-quantized copy of a version and evaluate it beside it",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--dataset", metavar="FILE",
                   help="default: the dataset of the parent's latest evaluation")

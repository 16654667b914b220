"""The `gateway` command: registry, tokens, serving and the demo, for people and scripts.

Talks to the database directly (it is the registry's owner), prints tables for people and
`--json` for scripts, and turns every expected failure into one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from gateway.cli.common import (
    CliError,
    CommandExit,
    Context,
    actor,
    emit,
    format_table,
    local_only,
    over_http,
)
from gateway.settings import SettingsError
from gateway.traffic.admin import TrafficAdmin
from registry import tokens
from registry.errors import GatewayError

# ---- db ------------------------------------------------------------------------------------

@local_only
def cmd_db_upgrade(ctx: Context, args: argparse.Namespace) -> None:
    from registry.migrate import upgrade

    upgrade(ctx.settings.database_url)
    print(f"schema is up to date on {_safe_url(ctx.settings.database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---- tokens --------------------------------------------------------------------------------

@local_only
def cmd_token_create(ctx: Context, args: argparse.Namespace) -> None:
    token = tokens.create_token(ctx.db, args.role, args.name, actor())
    print(f"created {args.role} token {args.name!r}; it is shown once, keep it secret:")
    print(token)


@local_only
def cmd_token_list(ctx: Context, args: argparse.Namespace) -> None:
    rows = tokens.list_tokens(ctx.db)
    emit(args, rows, lambda rs: format_table(
        ["name", "role", "key_id", "created_at", "revoked_at"],
        [[r["name"], r["role"], r["key_id"], r["created_at"], r["revoked_at"] or "-"]
         for r in rs]))


@local_only
def cmd_token_revoke(ctx: Context, args: argparse.Namespace) -> None:
    count = tokens.revoke_token(ctx.db, args.name, actor())
    print(f"revoked {count} token(s) named {args.name!r}")


# ---- models --------------------------------------------------------------------------------

def _versions_table(records: list[dict[str, Any]]) -> str:
    return format_table(
        ["model", "version", "stage", "aliases", "accuracy", "size", "sha256", "created_at",
         "parent"],
        [[r["model"], r["version"], r["stage"], ",".join(r["aliases"]) or "-",
          _metric(r, "accuracy"), r["size_bytes"], r["sha256"][:12], r["created_at"],
          r["parent_version"] or "-"] for r in records],
    )


def _metric(record: dict[str, Any], key: str) -> str:
    value = (record.get("metrics") or {}).get(key)
    return "-" if value is None else f"{value:.4f}"


@over_http
def cmd_models_list(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.models_list(),
         lambda ms: _versions_table([v for m in ms for v in m["versions"]]))


@over_http
def cmd_models_register(ctx: Context, args: argparse.Namespace) -> None:
    metadata = None
    if args.metadata:
        try:
            metadata = orjson.loads(args.metadata)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--metadata is not valid JSON: {exc}") from None
    record = ctx.backend.register(args.name, Path(args.file), metadata)
    emit(args, record, lambda r: f"registered {r['model']} version {r['version']} "
                                 f"(sha256 {r['sha256']})")


@over_http
def cmd_models_show(ctx: Context, args: argparse.Namespace) -> None:
    if args.version is None:
        emit(args, ctx.backend.model_show(args.name),
             lambda m: _batching_text(m["model"], m["batching"]) + "\n"
             + _versions_table(m["versions"]))
        return
    emit(args, ctx.backend.version_show(args.name, args.version), _record_text)


def _batching_summary(value: dict[str, Any] | None) -> str:
    if not value:
        return "off"
    return f"on, up to {value['max_batch']} rows per run, max wait {value['max_wait_us']} us"


def _batching_text(name: str, value: dict[str, Any] | None) -> str:
    return f"{name}: micro-batching {_batching_summary(value)}"


def _record_text(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} version {r['version']} ({r['stage']})"]
    for key in ("sha256", "size_bytes", "opset", "created_at", "created_by", "description"):
        lines.append(f"  {key}: {r[key]}")
    lines.append(f"  aliases: {', '.join(r['aliases']) or '-'}")
    for kind in ("inputs", "outputs"):
        specs = ", ".join(f"{s['name']} {s['datatype']}{s['shape']}" for s in r[kind])
        lines.append(f"  {kind}: {specs}")
    lines.append(f"  micro-batching: {_batching_summary(r.get('batching'))}")
    for key in ("dataset", "params", "metrics"):
        if r.get(key):
            lines.append(f"  {key}: {orjson.dumps(r[key]).decode()}")
    lineage = r.get("lineage", {})
    lines.append(f"  lineage: parent {lineage.get('parent_version') or '-'}, ancestors "
                 f"{lineage.get('ancestors') or '-'}, children {lineage.get('children') or '-'}")
    if "evaluation" in r:
        from gateway.lifecycle.summary import summary_lines

        lines.extend(f"  {line}" for line in summary_lines(r))
    return "\n".join(lines)


@over_http
def cmd_models_alias(ctx: Context, args: argparse.Namespace) -> None:
    if args.delete:
        ctx.backend.delete_alias(args.name, args.alias, args.reason)
        print(f"deleted alias {args.alias!r} of {args.name}")
        return
    if args.version is None:
        raise CliError("give the VERSION the alias should point at (or --delete)")
    result = ctx.backend.set_alias(args.name, args.alias, args.version, args.reason)
    emit(args, result, lambda r: f"{r['model']}:{r['alias']} -> version {r['version']}"
                                 f" (was {r['previous'] or '-'})")


@over_http
def cmd_models_archive(ctx: Context, args: argparse.Namespace) -> None:
    record = ctx.backend.archive(args.name, args.version, args.reason)
    emit(args, record, lambda r: f"archived {r['model']} version {r['version']}")


def _int_option(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CliError(f"{option} must be an integer, got {value!r}") from None


@over_http
def cmd_models_batching(ctx: Context, args: argparse.Namespace) -> None:
    max_batch = _int_option(args.max_batch, "--max-batch")
    max_wait = _int_option(args.max_wait_us, "--max-wait-us")
    if args.off:
        if max_wait is not None:
            raise CliError("--off takes no --max-wait-us")
        settings: dict[str, Any] = {"enabled": False}
    else:
        settings = {"max_batch": max_batch}
        if max_wait is not None:
            settings["max_wait_us"] = max_wait
    record = ctx.backend.set_batching(args.name, settings, args.reason)
    emit(args, record, lambda r: _batching_text(r["model"], r if r["enabled"] else None))


@over_http
def cmd_audit(ctx: Context, args: argparse.Namespace) -> None:
    entries = ctx.backend.audit(args.model, args.limit)
    emit(args, entries, lambda es: format_table(
        ["id", "ts", "actor", "action", "model", "version", "reason"],
        [[e["id"], e["ts"], e["actor"], e["action"], e["model"] or "-", e["version"] or "-",
          e["reason"] or "-"] for e in es]))


# ---- traffic -------------------------------------------------------------------------------

def _traffic(ctx: Context) -> TrafficAdmin:
    return ctx.services.traffic


def _policy_text(p: dict[str, Any]) -> str:
    weights = " ".join(f"{v}={w}" for v, w in p["weights"].items()) or "-"
    shadow = " ".join(f"{v}={s}%" for v, s in p["shadow"].items()) or "-"
    total = sum(p["weights"].values()) or 1
    shares = ", ".join(f"v{v} {100 * w / total:.1f}%" for v, w in p["weights"].items())
    return (f"{p['model']} revision {p['revision']}: weights {weights} ({shares or 'no policy'})"
            f"; shadow {shadow}\n  updated {p.get('updated_at') or '-'} by "
            f"{p.get('updated_by') or '-'}: {p.get('reason') or '-'}")


def _pairs(items: list[str], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        ref, sep, value = item.partition("=")
        if not sep or not ref:
            raise CliError(f"{what} must look like VERSION=NUMBER, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise CliError(f"{what} {item!r}: {value!r} is not a number") from None
        out[ref] = int(number) if number.is_integer() else number
    return out


@over_http
def cmd_traffic_show(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.traffic_show(args.name), _policy_text)


@over_http
def cmd_traffic_set(ctx: Context, args: argparse.Namespace) -> None:
    body = {"weights": _pairs(args.weights, "a weight"),
            "shadow": _pairs(args.shadow or [], "a shadow percent"), "reason": args.reason}
    if args.force:
        body["force"] = True
    emit(args, ctx.backend.traffic_set(args.name, body, args.if_match), _policy_text)


@over_http
def cmd_traffic_rollback(ctx: Context, args: argparse.Namespace) -> None:
    emit(args, ctx.backend.traffic_rollback(args.name, args.reason), _policy_text)


@over_http
def cmd_traffic_history(ctx: Context, args: argparse.Namespace) -> None:
    revisions = ctx.backend.traffic_history(args.name, args.limit)
    emit(args, revisions, lambda rs: format_table(
        ["revision", "action", "weights", "shadow", "updated_at", "by", "reason"],
        [[r["revision"], r["action"], orjson.dumps(r["weights"]).decode(),
          orjson.dumps(r["shadow"]).decode(), r["updated_at"], r["updated_by"],
          r["reason"] or "-"] for r in rs]))


# ---- analytics -----------------------------------------------------------------------------

@over_http
def cmd_analytics_compare(ctx: Context, args: argparse.Namespace) -> None:
    result = ctx.backend.compare(args.name, args.since, args.until)

    def table(r: dict[str, Any]) -> str:
        def fmt(value: Any, spec: str = ".4f") -> str:
            return "-" if value is None else format(value, spec)

        rows = []
        for v in r["versions"]:
            acc, rew, vs = v["accuracy"], v["reward"], v["vs_champion"] or {}
            rows.append([
                v["version"], v["requests"], v["errors"],
                fmt(v["latency_ms"].get("p50"), ".2f"), fmt(v["latency_ms"].get("p99"), ".2f"),
                v["feedback"],
                f"{acc['value']:.4f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]" if acc
                else "-",
                f"{rew['mean']:.4f}" if rew else "-",
                fmt((vs.get("accuracy") or {}).get("p_value")),
            ])
        champ = r["champion"]
        head = (f"{r['model']}: champion version {champ['version']} ({champ['source']})"
                if champ else f"{r['model']}: no outcomes in this window")
        return head + "\n" + format_table(
            ["version", "requests", "errors", "p50 ms", "p99 ms", "feedback",
             "accuracy [95% CI]", "reward", "p vs champion"], rows)

    emit(args, result, table)


@over_http
def cmd_analytics_export(ctx: Context, args: argparse.Namespace) -> None:
    for chunk in ctx.backend.export(args.name, args.since, args.until, args.version,
                                    args.kind, args.format):
        sys.stdout.buffer.write(chunk)


@local_only
def cmd_outcomes_prune(ctx: Context, args: argparse.Namespace) -> None:
    from datetime import UTC, datetime, timedelta

    from registry.outcomes import prune

    days = args.older_than_days or ctx.settings.outcome_retention_days
    if days < 1:
        raise CliError("--older-than-days must be at least 1")
    before = datetime.now(UTC) - timedelta(days=days)
    outcomes, feedback = prune(ctx.db, before)
    print(f"deleted {outcomes} outcomes and {feedback} feedback rows older than {days} days "
          f"({before.isoformat()})")


# ---- serving -------------------------------------------------------------------------------

@local_only
def cmd_serve(ctx: Context, args: argparse.Namespace) -> None:
    from gateway.cli.serve import serve

    if args.worker_class:
        os.environ["GATEWAY_WORKER_CLASS"] = args.worker_class
    if args.threads is not None:
        if args.threads < 1:
            raise CliError("--threads must be at least 1")
        os.environ["GATEWAY_THREADS"] = str(args.threads)
    status = serve(ctx.settings, bind=args.bind or ctx.settings.bind,
                   workers=args.workers if args.workers is not None else ctx.settings.workers)
    if status:
        raise CliError(f"gunicorn exited with status {status}")
    # gunicorn, the agent and the embedded Redis are gone and everything is written: leave
    # without the interpreter's teardown (half a second on a slow machine, which a stopping
    # gateway's supervisor would wait for)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@local_only
def cmd_demo(ctx: Context, args: argparse.Namespace) -> None:
    from gateway.cli.demo import run_demo

    if args.min_samples < 10:
        raise CliError("--min-samples must be at least 10")
    run_demo(ctx.settings, workdir=Path(args.dir), serve_after=not args.no_serve, bind=args.bind,
             traffic=not args.no_traffic, scenario=args.scenario, min_samples=args.min_samples)


# ---- parser --------------------------------------------------------------------------------

def remote_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """`--url`/`--token`, before the command or after it (`default` SUPPRESS on commands, so
    that a value given before the command is not reset)."""
    parser.add_argument("--url", default=default, metavar="URL",
                        help="drive a running gateway over HTTP (default: GATEWAY_URL; unset: "
                             "this host's database and Redis)")
    parser.add_argument("--token", default=default, metavar="TOKEN",
                        help="bearer token for --url (default: GATEWAY_TOKEN)")


def context_for(args: argparse.Namespace) -> Context:
    """The context a command runs in: a gateway over HTTP when a URL is given (the flag, or
    GATEWAY_URL) and the command works that way, else this host's stores."""
    from gateway.settings import Settings

    func = args.func
    flagged = getattr(args, "url", None)
    if getattr(func, "local_only", False):
        if flagged:
            raise CliError("this command runs on the gateway's own host only; drop --url")
        return Context()
    settings = Settings.from_env()
    url = flagged or settings.remote_url
    token = getattr(args, "token", None) or settings.remote_token
    if url and not getattr(func, "over_http", False):
        raise CliError("this command does not work over HTTP yet; run it on the gateway's "
                       "host without --url (and GATEWAY_URL unset)")
    if url and not token:
        raise CliError("--url needs a token: --token or GATEWAY_TOKEN (an ops token for "
                       "changes)")
    return Context(url=url, token=token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__.split("\n")[0])
    remote_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(group: Any, name: str, func: Callable[..., None], help_: str,
            json_flag: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        if getattr(func, "over_http", False):
            remote_options(p, argparse.SUPPRESS)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="sub", required=True)
    add(db, "upgrade", cmd_db_upgrade, "create or migrate the schema (Alembic)")

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="sub", required=True)
    p = add(tok, "create", cmd_token_create, "create a token; prints it as the last line")
    p.add_argument("--role", required=True, choices=tokens.ROLES)
    p.add_argument("--name", required=True)
    add(tok, "list", cmd_token_list, "list tokens (never their secrets)", json_flag=True)
    p = add(tok, "revoke", cmd_token_revoke, "revoke a token by name or key id")
    p.add_argument("name")

    models = sub.add_parser("models", help="the model registry").add_subparsers(
        dest="sub", required=True)
    add(models, "list", cmd_models_list, "every model and version", json_flag=True)
    p = add(models, "register", cmd_models_register, "register a new version", json_flag=True)
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--metadata", help="JSON object: description, dataset, params, metrics, "
                                      "parent_version, aliases")
    p = add(models, "show", cmd_models_show, "a model's versions, or one version's record",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("version", nargs="?")
    p = add(models, "alias", cmd_models_alias, "point an alias at a version", json_flag=True)
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", nargs="?")
    p.add_argument("--delete", action="store_true", help="remove the alias")
    p.add_argument("--reason")
    p = add(models, "archive", cmd_models_archive, "stop a version taking traffic",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", required=True)
    p = add(models, "batching", cmd_models_batching,
            "merge concurrent requests into one onnxruntime run (micro-batching), or stop",
            json_flag=True)
    p.add_argument("name")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--max-batch", metavar="ROWS", help="rows per merged run (1-4096)")
    mode.add_argument("--off", action="store_true", help="run every request on its own")
    p.add_argument("--max-wait-us", metavar="US",
                   help="longest a run waits for more requests while they keep arriving "
                        "(0-100000; default 0: never)")
    p.add_argument("--reason", required=True)
    from gateway.cli import deliver as cli_deliver
    from gateway.cli import lifecycle as cli_lifecycle
    from gateway.cli import rollout as cli_rollout
    from gateway.cli import store as cli_store

    cli_lifecycle.add_commands(models, add)

    traffic = sub.add_parser("traffic", help="traffic policies").add_subparsers(
        dest="sub", required=True)
    p = add(traffic, "show", cmd_traffic_show, "the live policy of a model", json_flag=True)
    p.add_argument("name")
    p = add(traffic, "set", cmd_traffic_set, "replace a model's policy: 1=90 2=10",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    p.add_argument("--shadow", nargs="*", metavar="VERSION=PERCENT")
    p.add_argument("--reason", required=True)
    p.add_argument("--if-match", type=int, help="refuse unless the live revision is this one")
    p.add_argument("--force", action="store_true",
                   help="give weight to versions failing the evaluation gate (audited)")
    p = add(traffic, "rollback", cmd_traffic_rollback, "restore the previous revision",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("--reason", required=True)
    p = add(traffic, "history", cmd_traffic_history, "every revision of a policy",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("--limit", type=int, default=50)

    analytics = sub.add_parser("analytics", help="compare versions on outcomes").add_subparsers(
        dest="sub", required=True)
    p = add(analytics, "compare", cmd_analytics_compare, "per-version outcome comparison",
            json_flag=True)
    p.add_argument("name")
    p.add_argument("--since")
    p.add_argument("--until")
    p = add(analytics, "export", cmd_analytics_export, "outcome rows as CSV or JSON lines")
    p.add_argument("name")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--version", type=int)
    p.add_argument("--kind", choices=["primary", "shadow"])
    outcomes = sub.add_parser("outcomes", help="the outcome log").add_subparsers(
        dest="sub", required=True)
    p = add(outcomes, "prune", cmd_outcomes_prune,
            "delete outcomes and feedback older than the retention period")
    p.add_argument("--older-than-days", type=int,
                   help="default: GATEWAY_OUTCOME_RETENTION_DAYS (90)")

    cli_rollout.add_commands(sub, add)
    cli_deliver.add_command(sub, add)
    cli_store.add_commands(sub, add)

    p = add(sub, "audit", cmd_audit, "who changed what, when and why", json_flag=True)
    p.add_argument("--model")
    p.add_argument("--limit", type=int, default=50)

    p = add(sub, "serve", cmd_serve, "serve with gunicorn")
    p.add_argument("--bind", default=None, help="host:port (default GATEWAY_BIND or "
                   "127.0.0.1:8000)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default GATEWAY_WORKERS or 2)")
    p.add_argument("--worker-class", choices=["gthread", "sync"], default=None,
                   help="gunicorn worker class (default GATEWAY_WORKER_CLASS or sync; see "
                   "docs/performance.md)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per gthread worker (default GATEWAY_THREADS or 4)")

    p = add(sub, "demo", cmd_demo, "build, register and serve the example models")
    p.add_argument("--dir", default=".", help="working directory for the demo's files")
    p.add_argument("--bind", default="127.0.0.1:8000")
    p.add_argument("--no-serve", action="store_true", help="set up, print, and exit")
    p.add_argument("--no-traffic", action="store_true",
                   help="no simulated application (default: GATEWAY_DEMO_RATE requests/s)")
    p.add_argument("--scenario", choices=["promote", "rollback"], default="promote",
                   help="promote: the mlp, better, is rolled out step by step; rollback: a "
                        "retrained mlp with a label bug is rolled out and rolled back")
    p.add_argument("--min-samples", type=int, default=100,
                   help="labelled outcomes the rollout waits for at each step (default 100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx: Context | None = None
    try:
        ctx = context_for(args)
        args.func(ctx, args)
    except CommandExit as exc:
        return exc.status
    except (CliError, SettingsError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        first = str(exc.orig if hasattr(exc, "orig") and exc.orig else exc).strip().splitlines()
        print(f"gateway: error: database: {first[0] if first else exc.__class__.__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if ctx is not None:
            ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

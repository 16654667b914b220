"""`gateway store status|rotate-key|migrate`: the artifact store itself, on this host.

Local only: they read and write the store `GATEWAY_MODEL_STORE` names, with the keys of this
host's settings, and need no database. Both changing commands can be stopped at any point and
run again (`registry.store_admin`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, cast

from gateway.cli.common import CliError, Context, emit, local_only
from gateway.services import store_for
from registry.store import ArtifactError
from registry.store_admin import Progress, WalkableStore, key_census, migrate, rotate_key
from registry.stores import is_object_storage


def _store(ctx: Context) -> WalkableStore:
    return cast(WalkableStore, store_for(ctx.settings))


def _report(sha256: str, what: str) -> None:
    print(f"{sha256[:16]}  {what}", flush=True)


def _finish(progress: Progress, verb: str) -> None:
    print(f"{progress.done} {verb}, {progress.skipped} already done, "
          f"{len(progress.failed)} failed" + ("; stopped at --limit, run again to go on"
                                              if progress.stopped_early else ""))
    if progress.failed:
        raise CliError(f"{len(progress.failed)} artifact(s) failed (listed above); fix them and "
                       "run the command again: what is done is skipped")


@local_only
def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    store = _store(ctx)
    try:
        census = key_census(store)
    except ArtifactError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # boto3's errors: the bucket unreachable or refusing us
        raise CliError(f"cannot list {store.describe()}: {exc}") from None
    data: dict[str, Any] = {
        "store": store.describe(), "health": store.health(),
        "current_key_id": store.keyring.current_id,
        "artifacts_by_key": dict(census),
    }
    cache = getattr(store, "cache", None)
    if cache is not None:
        data["cache"] = {"dir": str(cache.root), "bytes": cache.size(),
                         "max_bytes": cache.max_bytes, "plaintext": cache.plaintext}

    def text(d: dict[str, Any]) -> str:
        lines = [f"store: {d['store']} ({d['health']})",
                 f"current key id: {d['current_key_id'] or 'none (stored as they are)'}"]
        for kid, count in sorted(d["artifacts_by_key"].items()):
            lines.append(f"  {count} artifact(s) under {kid}")
        if "cache" in d:
            c = d["cache"]
            lines.append(f"cache: {c['dir']}, {c['bytes']} of {c['max_bytes']} bytes"
                         + (", plaintext" if c["plaintext"] else ""))
        pending = sum(n for k, n in d["artifacts_by_key"].items() if k != d["current_key_id"])
        if d["current_key_id"] and pending:
            lines.append(f"{pending} artifact(s) not under the current key: run "
                         "`gateway store rotate-key`")
        return "\n".join(lines)

    emit(args, data, text)


@local_only
def cmd_rotate_key(ctx: Context, args: argparse.Namespace) -> None:
    store = _store(ctx)
    print(f"re-encrypting {store.describe()} under key id {store.keyring.current_id}",
          flush=True)
    try:
        progress = rotate_key(store, limit=args.limit, report=_report)
    except ArtifactError as exc:
        raise CliError(str(exc)) from None
    _finish(progress, "re-encrypted")


@local_only
def cmd_migrate(ctx: Context, args: argparse.Namespace) -> None:
    if not is_object_storage(args.to):
        raise CliError(f"--to must be an s3://bucket/prefix URL, got {args.to!r}")
    if is_object_storage(ctx.settings.model_store):
        raise CliError("GATEWAY_MODEL_STORE is already object storage; migrate copies a local "
                       "store into a bucket")
    source = _store(ctx)
    target = store_for(ctx.settings.with_(model_store=args.to))
    print(f"copying {source.describe()} into {target.describe()}", flush=True)
    try:
        progress = migrate(source, cast(Any, target), limit=args.limit, report=_report)
    except ArtifactError as exc:
        raise CliError(str(exc)) from None
    _finish(progress, "copied")
    if not progress.failed and not progress.stopped_early:
        print(f"done: set GATEWAY_MODEL_STORE={args.to} (and GATEWAY_MODEL_CACHE) on every "
              "replica", file=sys.stderr)


def add_commands(sub: Any, add: Any) -> None:
    group = sub.add_parser("store", help="the artifact store (local only)").add_subparsers(
        dest="sub", required=True)
    add(group, "status", cmd_status, "where artifacts are, under which keys, the cache",
        json_flag=True)
    p = add(group, "rotate-key", cmd_rotate_key,
            "re-encrypt every artifact under GATEWAY_ARTIFACT_KEY (old keys in "
            "GATEWAY_ARTIFACT_OLD_KEYS); resumable")
    p.add_argument("--limit", type=int, default=None,
                   help="re-encrypt at most this many artifacts in this run")
    p = add(group, "migrate", cmd_migrate,
            "copy the local store into S3-compatible storage, verified; resumable")
    p.add_argument("--to", required=True, help="s3://bucket/prefix")
    p.add_argument("--limit", type=int, default=None,
                   help="copy at most this many artifacts in this run")

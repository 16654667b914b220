"""Where a `gateway` command's work happens: this host's database and Redis, or a running
gateway over HTTP (`--url`/`--token`, or `GATEWAY_URL`/`GATEWAY_TOKEN`).

Each command is written once (`gateway.cli.main`, `gateway.cli.lifecycle`,
`gateway.cli.rollout`): it parses its arguments, asks its context's backend for the data, and
prints it. `LocalBackend` runs the same services the HTTP routes run; `RemoteBackend` calls
those routes, so a CI job needs only an ops token, its token's name is the audit actor, and the
same command prints the same `--json` either way. A server error comes back as the same
`GatewayError` code and message the local form would raise (`http_client.RemoteError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from registry.errors import InvalidInput

if TYPE_CHECKING:
    from gateway.cli.http_client import GatewayClient
    from gateway.services import Services
    from gateway.settings import Settings
    from registry.db import Database
    from registry.store import Store


class Stores(Protocol):
    """What the local backend needs from the command's context (`gateway.cli.common`)."""

    settings: Settings

    @property
    def services(self) -> Services: ...
    @property
    def db(self) -> Database: ...
    @property
    def store(self) -> Store: ...
    def announce(self, model: str) -> None: ...
    def note(self, text: str) -> None: ...


class Backend(Protocol):
    def models_list(self) -> list[dict[str, Any]]: ...
    def model_show(self, name: str) -> dict[str, Any]: ...
    def version_show(self, name: str, ref: str) -> dict[str, Any]: ...
    def register(self, name: str, path: Path, metadata: Any) -> dict[str, Any]: ...
    def diff(self, name: str, a: str, b: str) -> dict[str, Any]: ...
    def evaluate(self, name: str, ref: str, dataset: Path) -> dict[str, Any]: ...
    def gate(self, name: str, rules: list[str] | None, change: bool,
             reason: str | None) -> dict[str, Any]: ...
    def set_alias(self, name: str, alias: str, ref: str, reason: str | None
                  ) -> dict[str, Any]: ...
    def delete_alias(self, name: str, alias: str, reason: str | None) -> None: ...
    def archive(self, name: str, ref: str, reason: str) -> dict[str, Any]: ...
    def traffic_show(self, name: str) -> dict[str, Any]: ...
    def traffic_set(self, name: str, body: dict[str, Any], if_match: int | None
                    ) -> dict[str, Any]: ...
    def traffic_rollback(self, name: str, reason: str | None) -> dict[str, Any]: ...
    def traffic_history(self, name: str, limit: int) -> list[dict[str, Any]]: ...
    def rollout_start(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def rollout_status(self, name: str) -> dict[str, Any]: ...
    def rollout_change(self, name: str, action: str, reason: str | None) -> dict[str, Any]: ...
    def audit(self, model: str | None, limit: int) -> list[dict[str, Any]]: ...
    def set_batching(self, name: str, settings: dict[str, Any], reason: str | None
                     ) -> dict[str, Any]: ...
    def quantize(self, name: str, ref: str, dataset: Path | None) -> dict[str, Any]: ...
    def compare(self, name: str, since: str | None, until: str | None) -> dict[str, Any]: ...
    def export(self, name: str, since: str | None, until: str | None, version: int | None,
               kind: str | None, fmt: str) -> Iterator[bytes]: ...


class LocalBackend:
    """The database, model store and Redis of this host's settings."""

    def __init__(self, ctx: Stores, actor: str) -> None:
        self.ctx = ctx
        self.actor = actor

    def _actor(self) -> str:
        return self.actor

    def models_list(self) -> list[dict[str, Any]]:
        from registry import service

        models = service.list_models(self.ctx.db)
        for model in models:  # as GET /admin/models shows them
            model["traffic"] = self.ctx.services.traffic.show(model["model"])
        return models

    def model_show(self, name: str) -> dict[str, Any]:
        from registry.errors import UnknownModel
        from registry.names import check_model_name

        check_model_name(name)
        found = [m for m in self.models_list() if m["model"] == name]
        if not found:
            raise UnknownModel(f"model {name!r} is not registered")
        return found[0]

    def version_show(self, name: str, ref: str) -> dict[str, Any]:
        from gateway.lifecycle.summary import version_view

        return version_view(self.ctx.db, name, ref)

    def register(self, name: str, path: Path, metadata: Any) -> dict[str, Any]:
        from registry import service

        record = service.register_version(self.ctx.db, self.ctx.store, name,
                                          read_file(path, self.ctx.settings.max_model_bytes),
                                          metadata, self._actor(),
                                          self.ctx.settings.max_model_bytes)
        self.ctx.announce(name)
        return dict(record)

    def diff(self, name: str, a: str, b: str) -> dict[str, Any]:
        from gateway.lifecycle.diff import diff_versions

        return diff_versions(self.ctx.db, name, a, b)

    def evaluate(self, name: str, ref: str, dataset: Path) -> dict[str, Any]:
        from gateway.lifecycle.datasets import load_dataset
        from gateway.lifecycle.evaluation import evaluate_and_gate, single_input_name
        from registry import service

        record = service.get_version(self.ctx.db, name, ref)
        data = load_dataset(dataset, self.ctx.settings.max_model_bytes,
                            single_input_name(record))
        return evaluate_and_gate(self.ctx.db, self.ctx.store, name, record["version"], data,
                                 self._actor())

    def gate(self, name: str, rules: list[str] | None, change: bool,
             reason: str | None) -> dict[str, Any]:
        from gateway.lifecycle.gate import gate_status, normalise_rules
        from registry import evaluations

        if change:
            evaluations.set_gate(self.ctx.db, name, normalise_rules(rules) if rules else None,
                                 self._actor(), reason)
        return gate_status(self.ctx.db, name)

    def set_alias(self, name: str, alias: str, ref: str, reason: str | None
                  ) -> dict[str, Any]:
        from registry import service

        result = service.set_alias(self.ctx.db, name, alias, ref, self._actor(), reason)
        self.ctx.announce(name)
        return result

    def delete_alias(self, name: str, alias: str, reason: str | None) -> None:
        from registry import service

        service.delete_alias(self.ctx.db, name, alias, self._actor(), reason)
        self.ctx.announce(name)

    def archive(self, name: str, ref: str, reason: str) -> dict[str, Any]:
        from registry import service
        from registry.traffic import versions_with_traffic

        live = versions_with_traffic(self.ctx.db, name)
        record = service.archive_version(self.ctx.db, name, ref, self._actor(), reason, live)
        self.ctx.announce(name)
        return dict(record)

    def traffic_show(self, name: str) -> dict[str, Any]:
        return dict(self.ctx.services.traffic.show(name))

    def traffic_set(self, name: str, body: dict[str, Any], if_match: int | None
                    ) -> dict[str, Any]:
        admin = self.ctx.services.traffic
        policy = admin.set(name, body, self._actor(), if_match)
        self.ctx.announce(name)
        if admin.channel is None:
            self.ctx.note("no gateway Redis is reachable; the policy is saved and becomes "
                          "live when a gateway starts")
        return dict(policy)

    def traffic_rollback(self, name: str, reason: str | None) -> dict[str, Any]:
        policy = self.ctx.services.traffic.rollback(name, self._actor(), reason)
        self.ctx.announce(name)
        return dict(policy)

    def traffic_history(self, name: str, limit: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.ctx.services.traffic.history(name, limit)]

    def rollout_start(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        rollouts = self.ctx.services.rollouts
        started = rollouts.start(name, body, self._actor())
        self.ctx.announce(name)
        if rollouts.client is None:
            self.ctx.note("no gateway Redis is reachable; the rollout moves once a gateway "
                          "serves")
        return dict(started)

    def rollout_status(self, name: str) -> dict[str, Any]:
        return dict(self.ctx.services.rollouts.status(name))

    def rollout_change(self, name: str, action: str, reason: str | None) -> dict[str, Any]:
        rollouts = self.ctx.services.rollouts
        change = {"pause": rollouts.pause, "resume": rollouts.resume,
                  "abort": rollouts.abort}[action]
        changed = change(name, self._actor(), reason)
        self.ctx.announce(name)
        return dict(changed)

    def audit(self, model: str | None, limit: int) -> list[dict[str, Any]]:
        from registry import service

        return service.list_audit(self.ctx.db, model=model, limit=limit)


    def set_batching(self, name: str, settings: dict[str, Any], reason: str | None
                     ) -> dict[str, Any]:
        from registry import service

        record = service.set_batching(self.ctx.db, name, settings, self._actor(), reason)
        self.ctx.announce(name)
        return record

    def quantize(self, name: str, ref: str, dataset: Path | None) -> dict[str, Any]:
        from gateway.lifecycle.datasets import load_dataset
        from gateway.lifecycle.evaluation import single_input_name
        from gateway.lifecycle.quantize import quantize, quantized_view
        from registry import service

        record = service.get_version(self.ctx.db, name, ref)
        data = (load_dataset(dataset, self.ctx.settings.max_model_bytes,
                             single_input_name(record)) if dataset else None)
        result = quantize(self.ctx.db, self.ctx.store, name, record["version"], self._actor(),
                          data, max_bytes=self.ctx.settings.max_model_bytes)
        self.ctx.announce(name)
        return quantized_view(result)

    def compare(self, name: str, since: str | None, until: str | None) -> dict[str, Any]:
        from gateway.outcomes.comparison import compare, window

        self.ctx.services.catalog.read_model(name)  # 404 for an unknown model, as the route
        start, end = window(since, until)
        return compare(self.ctx.db, name, start, end)

    def export(self, name: str, since: str | None, until: str | None, version: int | None,
               kind: str | None, fmt: str) -> Iterator[bytes]:
        from gateway.outcomes.comparison import window
        from gateway.web.blueprints.analytics import csv_chunks, jsonl_chunks
        from registry.outcomes import check_kind, export_rows

        start, end = window(since, until)
        rows = export_rows(self.ctx.db, name, start, end, version, check_kind(kind))
        return csv_chunks(rows) if fmt == "csv" else jsonl_chunks(rows)


class RemoteBackend:
    """A running gateway's `/admin` routes, with the token's role and name."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    def models_list(self) -> list[dict[str, Any]]:
        return list(self.client.get("/admin/models")["models"])

    def model_show(self, name: str) -> dict[str, Any]:
        from registry.errors import UnknownModel
        from registry.names import check_model_name

        check_model_name(name)
        found = [m for m in self.models_list() if m["model"] == name]
        if not found:
            raise UnknownModel(f"model {name!r} is not registered")
        return found[0]

    def version_show(self, name: str, ref: str) -> dict[str, Any]:
        return dict(self.client.get(f"/admin/models/{_seg(name)}/versions/{_seg(ref)}"))

    def register(self, name: str, path: Path, metadata: Any) -> dict[str, Any]:
        data = read_file(path, None)
        form = {"metadata": orjson.dumps(metadata).decode()} if metadata is not None else {}
        return dict(self.client.post(f"/admin/models/{_seg(name)}/versions", data=form,
                                     files={"file": (path.name, data)}))

    def diff(self, name: str, a: str, b: str) -> dict[str, Any]:
        return dict(self.client.get(f"/admin/models/{_seg(name)}/diff",
                                    params={"a": a, "b": b}))

    def evaluate(self, name: str, ref: str, dataset: Path) -> dict[str, Any]:
        return dict(self.client.post(
            f"/admin/models/{_seg(name)}/versions/{_seg(ref)}/evaluations",
            files={"dataset": (dataset.name, read_file(dataset, None))}))

    def gate(self, name: str, rules: list[str] | None, change: bool,
             reason: str | None) -> dict[str, Any]:
        path = f"/admin/models/{_seg(name)}/gate"
        if change:
            return dict(self.client.put(path, json={"rules": rules or None, "reason": reason}))
        return dict(self.client.get(path))

    def set_alias(self, name: str, alias: str, ref: str, reason: str | None
                  ) -> dict[str, Any]:
        return dict(self.client.put(f"/admin/models/{_seg(name)}/aliases/{_seg(alias)}",
                                    json={"version": ref, "reason": reason}))

    def delete_alias(self, name: str, alias: str, reason: str | None) -> None:
        self.client.delete(f"/admin/models/{_seg(name)}/aliases/{_seg(alias)}")

    def archive(self, name: str, ref: str, reason: str) -> dict[str, Any]:
        return dict(self.client.post(f"/admin/models/{_seg(name)}/versions/{_seg(ref)}/archive",
                                     json={"reason": reason}))

    def traffic_show(self, name: str) -> dict[str, Any]:
        return dict(self.client.get(f"/admin/models/{_seg(name)}/traffic"))

    def traffic_set(self, name: str, body: dict[str, Any], if_match: int | None
                    ) -> dict[str, Any]:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else None
        return dict(self.client.put(f"/admin/models/{_seg(name)}/traffic", json=body,
                                    headers=headers))

    def traffic_rollback(self, name: str, reason: str | None) -> dict[str, Any]:
        return dict(self.client.post(f"/admin/models/{_seg(name)}/rollback",
                                     json={"reason": reason}))

    def traffic_history(self, name: str, limit: int) -> list[dict[str, Any]]:
        revisions = self.client.get(f"/admin/models/{_seg(name)}/traffic/history")["revisions"]
        return list(revisions)[:limit]

    def rollout_start(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.client.post(f"/admin/models/{_seg(name)}/rollout", json=body))

    def rollout_status(self, name: str) -> dict[str, Any]:
        return dict(self.client.get(f"/admin/models/{_seg(name)}/rollout"))

    def rollout_change(self, name: str, action: str, reason: str | None) -> dict[str, Any]:
        return dict(self.client.post(f"/admin/models/{_seg(name)}/rollout/{action}",
                                     json={"reason": reason}))

    def audit(self, model: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if model is not None:
            params["model"] = model
        return list(self.client.get("/admin/audit", params=params)["entries"])


    def set_batching(self, name: str, settings: dict[str, Any], reason: str | None
                     ) -> dict[str, Any]:
        return dict(self.client.put(f"/admin/models/{_seg(name)}/batching",
                                    json={**settings, "reason": reason}))

    def quantize(self, name: str, ref: str, dataset: Path | None) -> dict[str, Any]:
        if dataset is not None:
            raise InvalidInput("--dataset works locally only; over HTTP the parent's latest "
                           "evaluation dataset is used (evaluate the parent first)")
        return dict(self.client.post(
            f"/admin/models/{_seg(name)}/versions/{_seg(ref)}/quantize", json={}))

    def compare(self, name: str, since: str | None, until: str | None) -> dict[str, Any]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v}
        return dict(self.client.get(f"/analytics/models/{_seg(name)}/compare", params=params))

    def export(self, name: str, since: str | None, until: str | None, version: int | None,
               kind: str | None, fmt: str) -> Iterator[bytes]:
        params = {k: v for k, v in (("since", since), ("until", until), ("version", version),
                                    ("kind", kind), ("format", fmt)) if v is not None}
        return self.client.stream(f"/analytics/models/{_seg(name)}/outcomes", params=params)


def _seg(value: str) -> str:
    """One path segment, escaped (a name or alias is checked by the server, not trusted)."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def read_file(path: Path, limit: int | None) -> bytes:
    """A model or dataset file's bytes; a missing or oversized file is the user's error."""
    try:
        size = path.stat().st_size
        if limit is not None and size > limit:
            raise InvalidInput(f"{path} is {size} bytes; the limit (GATEWAY_MAX_MODEL_BYTES) "
                               f"is {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None

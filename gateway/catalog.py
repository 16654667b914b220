"""The registry as each worker sees it: an immutable snapshot, swapped whole when it changes.

The hot path resolves model and version against this in-process copy, never the database. A
background thread polls the registry's change counter (the newest audit id) and reloads the
snapshot when it moves, so aliases, archives and new versions reach every worker within about
one poll interval. A miss (a version registered a moment ago) triggers one immediate reload,
rate-limited so that requests for names that do not exist cannot hammer the database.

The snapshot also keeps the registry's full records as `GET /admin/models` shows them, so that
registry reads are still answered, from this copy, while the database is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from gateway.batching import BatchSettings
from gateway.codecs import TensorSpec
from gateway.per_process import OncePerProcess
from registry.db import Database
from registry.errors import UnknownModel, UnknownVersion
from registry.names import check_model_name, parse_version_ref
from registry.service import change_counter, list_models
from registry.tables import Alias, Model, ModelVersion

log = logging.getLogger(__name__)

MISS_RELOAD_INTERVAL_S = 0.25


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stage: str
    batching: BatchSettings | None = None  # the model's micro-batching settings; None is off

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: dict[int, VersionInfo]
    aliases: dict[str, int]
    batching: BatchSettings | None = None

    @property
    def latest_live(self) -> VersionInfo | None:
        live = [v for n, v in sorted(self.versions.items()) if v.stage != "archived"]
        return live[-1] if live else None


@dataclass(frozen=True)
class Snapshot:
    counter: int
    models: dict[str, ModelEntry] = field(default_factory=dict)
    # `registry.service.list_models` as of this snapshot (callers copy before changing it)
    records: tuple[dict[str, Any], ...] = ()


def load_snapshot(db: Database) -> Snapshot:
    counter = change_counter(db)
    with db.read() as session:
        models = list(session.scalars(select(Model)))
        names = {m.id: m.name for m in models}
        batching = {m.name: BatchSettings.from_record(m.batching) for m in models}
        versions: dict[str, dict[int, VersionInfo]] = {n: {} for n in names.values()}
        aliases: dict[str, dict[str, int]] = {n: {} for n in names.values()}
        for row in session.scalars(select(ModelVersion)):
            name = names[row.model_id]
            versions[name][row.version] = VersionInfo(
                model=name,
                version=row.version,
                sha256=row.sha256,
                size_bytes=row.size_bytes,
                inputs=tuple(TensorSpec.from_record(r) for r in row.inputs),
                outputs=tuple(TensorSpec.from_record(r) for r in row.outputs),
                stage=row.stage,
                batching=batching[name],
            )
        for alias in session.scalars(select(Alias)):
            aliases[names[alias.model_id]][alias.name] = alias.version
    return Snapshot(
        counter=counter,
        models={n: ModelEntry(n, versions[n], aliases[n], batching[n]) for n in names.values()},
        records=tuple(list_models(db)),
    )


class Catalog:
    """Per-process registry snapshot with background refresh."""

    def __init__(self, db: Database, poll_seconds: float) -> None:
        self._db = db
        self._poll = poll_seconds
        self._snapshot = Snapshot(counter=-1)
        self._lock = threading.Lock()
        self._last_miss_reload = 0.0
        self._started = OncePerProcess()
        self._stop = threading.Event()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.last_error: str | None = None

    def on_reload(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener` (on the poller thread) after each reload, e.g. to warm sessions."""
        self._listeners.append(listener)

    # -- refresh -----------------------------------------------------------------------------

    def reload(self) -> Snapshot:
        """Read the registry now; on failure keep serving the snapshot we have."""
        with self._lock:
            try:
                self._snapshot = load_snapshot(self._db)
                self.last_error = None
            except SQLAlchemyError as exc:
                self.last_error = f"registry unreachable: {exc.__class__.__name__}"
                log.warning("catalog reload failed; serving the last snapshot: %s", exc)
            return self._snapshot

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self._snapshot)
            except Exception:
                log.exception("catalog listener failed")

    def _poll_loop(self) -> None:
        self._notify()
        while not self._stop.wait(self._poll):
            try:
                if change_counter(self._db) != self._snapshot.counter:
                    self.reload()
                    self._notify()
                elif self.last_error:
                    self.last_error = None
            except SQLAlchemyError as exc:
                self.last_error = f"registry unreachable: {exc.__class__.__name__}"
            except Exception:  # the poller must survive anything; it is the refresh path
                log.exception("catalog poll failed")

    def ensure_started(self) -> None:
        """Start the poller in this process (after a fork, the parent's thread is gone)."""
        if not self._started.claim():
            return
        if self._snapshot.counter < 0:
            self.reload()
        self._thread = threading.Thread(target=self._poll_loop, name="catalog-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the poller and wait for it (it may be warming a session)."""
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=10)

    @property
    def snapshot(self) -> Snapshot:
        self.ensure_started()
        return self._snapshot

    def _reload_on_miss(self) -> bool:
        now = time.monotonic()
        if now - self._last_miss_reload < MISS_RELOAD_INTERVAL_S:
            return False
        self._last_miss_reload = now
        self.reload()
        return True

    # -- lookups -----------------------------------------------------------------------------

    def model(self, name: str) -> ModelEntry:
        check_model_name(name)
        entry = self.snapshot.models.get(name)
        if entry is None and self._reload_on_miss():
            entry = self._snapshot.models.get(name)
        if entry is None:
            raise UnknownModel(f"model {name!r} is not registered")
        return entry

    def version(self, name: str, ref: str | int) -> tuple[VersionInfo, str]:
        """Resolve an explicit version or alias; returns the version and `pin` or `alias`."""
        parsed = parse_version_ref(ref)
        entry = self.model(name)
        found = self._lookup(entry, parsed)
        if found is None and self._reload_on_miss():
            entry = self.model(name)
            found = self._lookup(entry, parsed)
        if found is None:
            raise UnknownVersion(f"model {name!r} has no version or alias {parsed!r}")
        if found.stage == "archived":
            raise UnknownVersion(f"{name} version {found.version} is archived and takes no traffic")
        return found, "alias" if isinstance(parsed, str) else "pin"

    @staticmethod
    def _lookup(entry: ModelEntry, parsed: int | str) -> VersionInfo | None:
        number = entry.aliases.get(parsed) if isinstance(parsed, str) else parsed
        return entry.versions.get(number) if number is not None else None

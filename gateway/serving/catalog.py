"""The registry as each worker sees it: an immutable snapshot, swapped whole when it changes.

The hot path resolves model and version against this in-process copy, never the database.
Three things keep it current. A registry change is announced on Redis and each worker reloads
before acknowledging it (`gateway.serving.registry_sync`), so the writer answers only once every
worker has it. A miss (a name or version the snapshot does not hold) looks that one model up
before answering 404, within a per-worker budget of lookups per second so that requests for
names that do not exist cannot hammer the database. And a background thread polls the registry's
change counter (the newest audit id), the safety net for a missed announcement.

Control-plane validations (traffic, rollouts) do not use the snapshot at all: `read_model`
reads the model from the database every time.

The snapshot also keeps the registry's full records as `GET /admin/models` shows them, so that
registry reads are still answered, from this copy, while the database is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gateway.per_process import OncePerProcess
from gateway.serving.batching import BatchSettings
from gateway.serving.codecs.tensors import TensorSpec
from registry.db import Database
from registry.errors import UnknownModel, UnknownVersion
from registry.names import check_model_name, parse_version_ref
from registry.service import change_counter, list_models
from registry.tables import Alias, AuditEntry, Model, ModelVersion

log = logging.getLogger(__name__)

PinReason = Literal["pin", "alias"]  # a subset of registry.records.Reason
MISS_LOOKUPS_PER_SECOND = 20.0  # per worker; a burst of this many is allowed at once


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
    counter: int = -1  # the registry's change counter when this entry was read

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


def _entries(session: Session, models: list[Model], counter: int) -> dict[str, ModelEntry]:
    """The entries of `models`, with their versions and aliases, read in one session."""
    names = {m.id: m.name for m in models}
    if not names:
        return {}
    batching = {m.name: BatchSettings.from_record(m.batching) for m in models}
    versions: dict[str, dict[int, VersionInfo]] = {n: {} for n in names.values()}
    aliases: dict[str, dict[str, int]] = {n: {} for n in names.values()}
    for row in session.scalars(select(ModelVersion).where(ModelVersion.model_id.in_(names))):
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
    for alias in session.scalars(select(Alias).where(Alias.model_id.in_(names))):
        aliases[names[alias.model_id]][alias.name] = alias.version
    return {n: ModelEntry(n, versions[n], aliases[n], batching[n], counter)
            for n in names.values()}


def load_snapshot(db: Database) -> Snapshot:
    counter = change_counter(db)
    with db.read() as session:
        models = _entries(session, list(session.scalars(select(Model))), counter)
    return Snapshot(counter=counter, models=models, records=tuple(list_models(db)))


def load_model_entry(db: Database, name: str) -> ModelEntry | None:
    """One model as the registry holds it now: the lookup behind a miss and the control plane."""
    with db.read() as session:
        counter = int(session.scalar(select(func.max(AuditEntry.id))) or 0)
        model = session.scalar(select(Model).where(Model.name == name))
        if model is None:
            return None
        return _entries(session, [model], counter)[name]


class LookupBudget:
    """A token bucket: how many database lookups for misses this worker may still make now."""

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._tokens = per_second
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Catalog:
    """Per-process registry snapshot with background refresh."""

    def __init__(self, db: Database, poll_seconds: float,
                 miss_lookups_per_second: float = MISS_LOOKUPS_PER_SECOND,
                 background: bool = True) -> None:
        """`background` False (a one-shot command): no poller; the first lookup reads the
        registry once."""
        self._background = background
        self._db = db
        self._poll = poll_seconds
        self._snapshot = Snapshot(counter=-1)
        self._lock = threading.Lock()
        self._misses = LookupBudget(miss_lookups_per_second)
        self._notified = -1  # the snapshot counter the listeners were last told of
        self._started = OncePerProcess()
        self._stop = threading.Event()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._poll_tasks: list[tuple[Callable[[], object], float]] = []
        self.last_error: str | None = None

    def on_poll(self, task: Callable[[], object], every: float) -> None:
        """Run `task` on the poller thread every `every` seconds (renewals that must not fall
        on a request: `TokenVerifier.refresh_stale`)."""
        self._poll_tasks.append((task, max(0.05, every)))

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
        self._notified = self._snapshot.counter
        for listener in self._listeners:
            try:
                listener(self._snapshot)
            except Exception:
                log.exception("catalog listener failed")

    def _poll_loop(self) -> None:
        self._notify()
        tick = min([self._poll, *(every for _, every in self._poll_tasks)])
        due = [time.monotonic() + every for _, every in self._poll_tasks]
        next_poll = time.monotonic() + self._poll
        while not self._stop.wait(tick):
            now = time.monotonic()
            for i, (task, every) in enumerate(self._poll_tasks):
                if now >= due[i]:
                    due[i] = now + every
                    try:
                        task()
                    except SQLAlchemyError:
                        pass  # the request path falls back to its own read, then its copy
                    except Exception:
                        log.exception("catalog poll task failed")
            if now < next_poll:
                continue
            next_poll = now + self._poll
            try:
                if change_counter(self._db) != self._snapshot.counter:
                    self.reload()
                elif self.last_error:
                    self.last_error = None
                if self._snapshot.counter != self._notified:  # also after an announced reload
                    self._notify()
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
        if not self._background:
            return
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

    def reload_to(self, counter: int) -> bool:
        """Reload unless the snapshot already holds registry change `counter`; True when the
        snapshot holds it afterwards (an announced change: `gateway.serving.registry_sync`)."""
        if self._snapshot.counter < counter:
            self.reload()
        return self._snapshot.counter >= counter

    def refresh_model(self, name: str) -> bool:
        """Read one model again now (an announced change); False when the registry could not
        be read. A model that no longer exists is left to the next full reload."""
        return self._read_one(name, "refresh") is not False

    def _install(self, entry: ModelEntry) -> None:
        """Put a model read just now into the snapshot, unless a newer read is already there."""
        with self._lock:
            current = self._snapshot.models.get(entry.name)
            if current is None or current.counter <= entry.counter:
                self._snapshot = replace(self._snapshot,
                                         models={**self._snapshot.models, entry.name: entry})

    def _fetch(self, name: str) -> ModelEntry | None:
        """Look one model up for a miss, if this second's budget allows; a database error is
        a miss like any other (the caller answers 404, or 503 when it knows better)."""
        if not self._misses.take():
            return None
        return self._read_one(name, "lookup") or None

    def _read_one(self, name: str, why: str) -> ModelEntry | None | Literal[False]:
        """The model as the registry holds it now, installed in the snapshot; None when it
        does not exist, False when the registry could not be read."""
        try:
            entry = load_model_entry(self._db, name)
        except SQLAlchemyError as exc:
            log.warning("%s of model %r failed: %s", why, name, exc.__class__.__name__)
            return False
        if entry is not None:
            self._install(entry)
        return entry

    # -- lookups -----------------------------------------------------------------------------

    def model(self, name: str) -> ModelEntry:
        """The data plane's lookup: the snapshot, then the database for a miss."""
        check_model_name(name)
        entry = self.snapshot.models.get(name) or self._fetch(name)
        if entry is None:
            raise UnknownModel(f"model {name!r} is not registered")
        return entry

    def version(self, name: str, ref: str | int) -> tuple[VersionInfo, PinReason]:
        """Resolve an explicit version or alias; returns the version and `pin` or `alias`."""
        parsed = parse_version_ref(ref)
        entry = self.model(name)
        if self._lookup(entry, parsed) is None:
            entry = self._fetch(name) or entry
        return self._resolve(entry, parsed)

    def read_model(self, name: str) -> ModelEntry:
        """The control plane's lookup: the registry as it is now, never this worker's copy."""
        check_model_name(name)
        entry = load_model_entry(self._db, name)
        if entry is None:
            raise UnknownModel(f"model {name!r} is not registered")
        self._install(entry)
        return entry

    def read_version(self, entry: ModelEntry, ref: str | int) -> tuple[VersionInfo, PinReason]:
        """Resolve a version or alias in an entry from `read_model`."""
        return self._resolve(entry, parse_version_ref(ref))

    @classmethod
    def _resolve(cls, entry: ModelEntry, parsed: int | str) -> tuple[VersionInfo, PinReason]:
        found = cls._lookup(entry, parsed)
        if found is None:
            raise UnknownVersion(f"model {entry.name!r} has no version or alias {parsed!r}")
        if found.stage == "archived":
            raise UnknownVersion(
                f"{entry.name} version {found.version} is archived and takes no traffic")
        return found, "alias" if isinstance(parsed, str) else "pin"

    @staticmethod
    def _lookup(entry: ModelEntry, parsed: int | str) -> VersionInfo | None:
        number = entry.aliases.get(parsed) if isinstance(parsed, str) else parsed
        return entry.versions.get(number) if number is not None else None

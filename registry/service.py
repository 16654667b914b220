"""Registry operations: register, look up, alias and archive versions, set a model's serving
settings (micro-batching); every change audited.

Each function is one unit of work on a `Database`. Version numbers are assigned inside the
writing transaction: SQLite serialises writers (`BEGIN IMMEDIATE`), PostgreSQL locks the model
row, and the unique constraint on (model, version) backs both; a lost race is retried.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from registry.db import Database
from registry.errors import (
    Conflict,
    InsufficientStorage,
    InvalidInput,
    PayloadTooLarge,
    Unavailable,
    UnknownModel,
    UnknownVersion,
)
from registry.inspect_onnx import InvalidModel, inspect_model
from registry.names import check_alias_name, check_model_name, parse_version_ref
from registry.records import Stage, VersionRecord
from registry.store import (
    ArtifactStoreFull,
    ArtifactStoreUnavailable,
    ArtifactStoreUnwritable,
    Store,
)
from registry.tables import Alias, AuditEntry, Model, ModelVersion, utcnow

METADATA_KEYS = {"description", "dataset", "params", "metrics", "parent_version", "aliases"}
MAX_METADATA_JSON = 64 * 1024
REGISTER_ATTEMPTS = 8
MAX_BATCH_ROWS = 4096
MAX_BATCH_WAIT_US = 100_000


def iso(ts: datetime | None) -> str | None:
    """UTC ISO 8601 with `Z`; SQLite hands back naive datetimes that were stored as UTC."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def audit(
    session: Session,
    actor: str,
    action: str,
    model: str | None = None,
    version: int | None = None,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            actor=actor, action=action, model=model, version=version, reason=reason, detail=detail
        )
    )


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Validate the registration metadata object; unknown keys are refused, not ignored."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object")
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown metadata keys {unknown}; allowed: {sorted(METADATA_KEYS)}"
        )
    out: dict[str, Any] = {}
    description = metadata.get("description", "")
    if not isinstance(description, str) or len(description) > 10_000:
        raise InvalidInput("metadata.description must be a string of at most 10000 characters")
    out["description"] = description
    dataset = metadata.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict) or set(dataset) - {"name", "version", "sha256"}:
            raise InvalidInput("metadata.dataset must be an object with name, version, sha256")
        for key, value in dataset.items():
            if not isinstance(value, str) or len(value) > 256:
                raise InvalidInput(f"metadata.dataset.{key} must be a string")
        digest = dataset.get("sha256")
        if digest is not None and (
            len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower())
        ):
            raise InvalidInput("metadata.dataset.sha256 must be 64 hex digits")
    out["dataset"] = dataset
    params = metadata.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput("metadata.params must be a JSON object")
    out["params"] = params
    metrics = metadata.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise InvalidInput("metadata.metrics must be an object of name -> number")
        for key, value in metrics.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidInput(f"metadata.metrics.{key} must be a finite number")
    out["metrics"] = metrics
    parent = metadata.get("parent_version")
    if parent is not None and (
        isinstance(parent, bool) or not isinstance(parent, int) or parent < 1
    ):
        raise InvalidInput("metadata.parent_version must be a positive integer")
    out["parent_version"] = parent
    aliases = metadata.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InvalidInput("metadata.aliases must be a list of alias names")
    out["aliases"] = sorted({check_alias_name(a) for a in aliases})
    return out


def _model_or_404(session: Session, name: str) -> Model:
    check_model_name(name)
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise UnknownModel(f"model {name!r} is not registered")
    return model


def _version_or_404(session: Session, model: Model, ref: str | int) -> ModelVersion:
    parsed = parse_version_ref(ref)
    if isinstance(parsed, int):
        number = parsed
    else:
        alias = session.scalar(
            select(Alias).where(Alias.model_id == model.id, Alias.name == parsed)
        )
        if alias is None:
            raise UnknownVersion(f"model {model.name!r} has no version or alias {parsed!r}")
        number = alias.version
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == number
        )
    )
    if row is None:
        raise UnknownVersion(f"model {model.name!r} has no version {number}")
    return row


def _aliases_by_version(session: Session, model: Model) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias in session.scalars(
        select(Alias).where(Alias.model_id == model.id).order_by(Alias.name)
    ):
        out.setdefault(alias.version, []).append(alias.name)
    return out


def version_record(row: ModelVersion, model_name: str, aliases: list[str]) -> VersionRecord:
    return {
        "model": model_name,
        "version": row.version,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "inputs": row.inputs,
        "outputs": row.outputs,
        "opset": row.opset,
        "stage": cast(Stage, row.stage),
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        "description": row.description,
        "dataset": row.dataset,
        "params": row.params,
        "metrics": row.metrics,
        "parent_version": row.parent_version,
        "aliases": aliases,
        "archived_at": iso(row.archived_at),
        "archived_reason": row.archived_reason,
    }


def register_version(
    db: Database,
    store: Store,
    name: str,
    data: bytes,
    metadata: Any,
    actor: str,
    max_bytes: int,
) -> VersionRecord:
    """Validate, store and record a new version; nothing is stored for a refused file."""
    check_model_name(name)
    meta = check_metadata(metadata)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"model file is {len(data)} bytes; the limit (GATEWAY_MAX_MODEL_BYTES) is {max_bytes}"
        )
    try:
        signature = inspect_model(data)
    except InvalidModel as exc:
        raise InvalidInput(str(exc)) from None
    try:
        sha256 = store.put(data)  # before any row: a refused write leaves the registry as it was
    except ArtifactStoreFull as exc:
        raise InsufficientStorage(str(exc)) from None
    except (ArtifactStoreUnwritable, ArtifactStoreUnavailable) as exc:
        raise Unavailable(str(exc)) from None
    last_error: Exception | None = None
    for _ in range(REGISTER_ATTEMPTS):
        try:
            with db.session() as session:
                return _insert_version(session, name, sha256, len(data), signature, meta, actor)
        except IntegrityError as exc:  # a concurrent writer took the name or number first
            last_error = exc
        except OperationalError as exc:  # e.g. PostgreSQL serialization/deadlock; retry
            last_error = exc
    raise Conflict(f"could not register a version of {name!r} after retries: {last_error}")


def _insert_version(
    session: Session,
    name: str,
    sha256: str,
    size: int,
    signature: Any,
    meta: dict[str, Any],
    actor: str,
) -> VersionRecord:
    model = session.scalar(select(Model).where(Model.name == name).with_for_update())
    if model is None:
        model = Model(name=name)
        session.add(model)
        session.flush()
        audit(session, actor, "model.create", model=name)
    existing = session.scalar(
        select(ModelVersion.version).where(
            ModelVersion.model_id == model.id, ModelVersion.sha256 == sha256
        )
    )
    if existing is not None:
        raise Conflict(
            f"these bytes are already registered as {name} version {existing} "
            f"(sha256 {sha256}); versions are immutable, so register different bytes"
        )
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    number = (latest or 0) + 1
    parent = meta.get("parent_version")
    if parent is not None and (latest is None or parent > latest):
        raise InvalidInput(f"parent_version {parent} is not a version of {name!r}")
    row = ModelVersion(
        model_id=model.id,
        version=number,
        sha256=sha256,
        size_bytes=size,
        inputs=signature.inputs,
        outputs=signature.outputs,
        opset=signature.opset,
        description=meta.get("description", ""),
        dataset=meta.get("dataset"),
        params=meta.get("params"),
        metrics=meta.get("metrics"),
        parent_version=parent,
        stage="registered",
        created_by=actor,
    )
    session.add(row)
    session.flush()
    audit(session, actor, "version.register", model=name, version=number,
          detail={"sha256": sha256, "size_bytes": size, "parent_version": parent})
    for alias in meta.get("aliases", []):
        _move_alias(session, model, alias, number, actor, reason="set at registration")
    return version_record(row, name, meta.get("aliases", []))


def _move_alias(
    session: Session, model: Model, alias: str, number: int, actor: str, reason: str | None
) -> int | None:
    current = session.scalar(
        select(Alias).where(Alias.model_id == model.id, Alias.name == alias)
    )
    previous = current.version if current else None
    if current is None:
        session.add(Alias(model_id=model.id, name=alias, version=number, updated_by=actor))
    else:
        current.version = number
        current.updated_at = utcnow()
        current.updated_by = actor
    audit(session, actor, "alias.set", model=model.name, version=number, reason=reason,
          detail={"alias": alias, "from": previous, "to": number})
    return previous


def set_alias(
    db: Database, name: str, alias: str, ref: Any, actor: str, reason: str | None = None
) -> dict[str, Any]:
    check_alias_name(alias)
    if isinstance(ref, bool) or not isinstance(ref, int | str):
        raise InvalidInput("version must be a positive integer or an alias")
    with db.session() as session:
        model = _model_or_404(session, name)
        row = _version_or_404(session, model, ref)
        if row.stage == "archived":
            raise Conflict(f"{name} version {row.version} is archived; an alias cannot point at it")
        previous = _move_alias(session, model, alias, row.version, actor, reason)
        return {"model": name, "alias": alias, "version": row.version, "previous": previous}


def delete_alias(
    db: Database, name: str, alias: str, actor: str, reason: str | None = None
) -> None:
    check_alias_name(alias)
    with db.session() as session:
        model = _model_or_404(session, name)
        current = session.scalar(
            select(Alias).where(Alias.model_id == model.id, Alias.name == alias)
        )
        if current is None:
            raise UnknownVersion(f"model {name!r} has no alias {alias!r}")
        session.delete(current)
        audit(session, actor, "alias.delete", model=name, version=current.version,
              reason=reason, detail={"alias": alias})


def archive_version(
    db: Database, name: str, ref: Any, actor: str, reason: str | None,
    live_versions: set[int] | None = None,
) -> VersionRecord:
    """Stop a version taking traffic. `live_versions` are those the live policy still uses."""
    with db.session() as session:
        model = _model_or_404(session, name)
        row = _version_or_404(session, model, ref)
        if row.stage == "archived":
            raise Conflict(f"{name} version {row.version} is already archived")
        if live_versions and row.version in live_versions:
            raise Conflict(
                f"{name} version {row.version} still has weight or shadow in the live traffic "
                "policy; move its traffic first"
            )
        pointing = [a.name for a in model.aliases if a.version == row.version]
        if pointing:
            raise Conflict(
                f"{name} version {row.version} is the target of aliases {pointing}; "
                "move or delete them first"
            )
        row.stage = "archived"
        row.archived_at = utcnow()
        row.archived_reason = reason
        audit(session, actor, "version.archive", model=name, version=row.version, reason=reason)
        return version_record(row, name, [])


def _bounded_int(body: dict[str, Any], key: str, low: int, high: int, default: int | None
                 ) -> int:
    value = body.get(key, default)
    if value is None:
        raise InvalidInput(f"{key} is required: an integer from {low} to {high}")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_batching(settings: Any) -> dict[str, int] | None:
    """Validate micro-batching settings: `{"max_batch": 1..4096, "max_wait_us": 0..100000}`
    (the wait defaults to 0, never wait), or `{"enabled": false}` for off (None)."""
    if not isinstance(settings, dict):
        raise InvalidInput('batching must be {"max_batch": N, "max_wait_us": U} or '
                           '{"enabled": false}')
    unknown = sorted(set(settings) - {"enabled", "max_batch", "max_wait_us"})
    if unknown:
        raise InvalidInput(f"unknown batching fields {unknown}; send max_batch, max_wait_us "
                           "(or enabled: false)")
    enabled = settings.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled must be true or false")
    if not enabled:
        if set(settings) - {"enabled"}:
            raise InvalidInput("batching is either off ({\"enabled\": false}) or has settings, "
                               "not both")
        return None
    return {"max_batch": _bounded_int(settings, "max_batch", 1, MAX_BATCH_ROWS, None),
            "max_wait_us": _bounded_int(settings, "max_wait_us", 0, MAX_BATCH_WAIT_US, 0)}


def batching_record(name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    return {"model": name, "enabled": value is not None,
            "max_batch": value["max_batch"] if value else None,
            "max_wait_us": value["max_wait_us"] if value else None}


def get_batching(db: Database, name: str) -> dict[str, Any]:
    with db.read() as session:
        return batching_record(name, _model_or_404(session, name).batching)


def set_batching(db: Database, name: str, settings: Any, actor: str, reason: str | None
                 ) -> dict[str, Any]:
    """Turn a model's micro-batching on, change it or turn it off. The audit row moves the
    change counter, so every worker's catalog picks the settings up within a poll."""
    value = check_batching(settings)
    set_model_setting(db, name, "batching", value, actor, reason)
    return batching_record(name, value)


def set_model_setting(db: Database, name: str, column: str, value: Any, actor: str,
                      reason: str | None) -> None:
    """Replace one of a model's JSON settings (`batching`, `gate`), audited as `model.<column>`
    with from and to, so the change counter moves and every worker re-reads it."""
    with db.session() as session:
        model = _model_or_404(session, name)
        previous = getattr(model, column)
        setattr(model, column, value)
        audit(session, actor, f"model.{column}", model=name, reason=reason,
              detail={"from": previous, "to": value})


def get_version(db: Database, name: str, ref: Any) -> VersionRecord:
    """The version record with its lineage: ancestors (parent first) and direct children."""
    with db.read() as session:
        model = _model_or_404(session, name)
        row = _version_or_404(session, model, ref)
        by_number = {v.version: v for v in model.versions}
        ancestors = []
        seen = {row.version}
        cursor = row.parent_version
        while cursor is not None and cursor not in seen and cursor in by_number:
            seen.add(cursor)
            ancestors.append(cursor)
            cursor = by_number[cursor].parent_version
        record = version_record(row, name, _aliases_by_version(session, model).get(row.version, []))
        record["lineage"] = {
            "parent_version": row.parent_version,
            "ancestors": ancestors,
            "children": [v.version for v in model.versions if v.parent_version == row.version],
        }
        return record


def list_models(db: Database) -> list[dict[str, Any]]:
    with db.read() as session:
        out = []
        for model in session.scalars(select(Model).order_by(Model.name)):
            aliases = _aliases_by_version(session, model)
            out.append(
                {
                    "model": model.name,
                    "created_at": iso(model.created_at),
                    "versions": [
                        version_record(v, model.name, aliases.get(v.version, []))
                        for v in model.versions
                    ],
                    "aliases": {a.name: a.version for a in model.aliases},
                    "batching": model.batching,
                }
            )
        return out


def list_audit(
    db: Database, model: str | None = None, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    with db.read() as session:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if model is not None:
            query = query.where(AuditEntry.model == model)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        return [
            {
                "id": e.id,
                "ts": iso(e.ts),
                "actor": e.actor,
                "action": e.action,
                "model": e.model,
                "version": e.version,
                "reason": e.reason,
                "detail": e.detail,
            }
            for e in session.scalars(query)
        ]


def change_counter(db: Database) -> int:
    """The newest audit id: it grows with every registry change, so workers poll it cheaply."""
    with db.read() as session:
        return int(session.scalar(select(func.max(AuditEntry.id))) or 0)

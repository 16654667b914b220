"""The registry on SQLite and PostgreSQL: numbering, immutability, validation, aliases, audit."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

import onnxruntime as ort
import pytest

from registry import service
from registry.db import Database
from registry.errors import Conflict, InvalidInput, PayloadTooLarge, UnknownVersion
from registry.store import ArtifactCorrupt, ArtifactStore
from tests.onnx_factory import add_constant_model, checker_failing_model, unloadable_model


def _register(settings, db, data, name="m", metadata=None):
    return service.register_version(db, ArtifactStore(settings.model_store), name, data,
                                    metadata, "tester", settings.max_model_bytes)


def _stored_files(settings) -> list[Path]:
    root = Path(settings.model_store)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _version_count(db: Database) -> int:
    return sum(len(m["versions"]) for m in service.list_models(db))


def test_signature_and_sha256_are_recorded_from_the_file(settings, db, examples_dir):
    data = (examples_dir / "forest.onnx").read_bytes()
    record = _register(settings, db, data, name="digits")
    assert record["version"] == 1
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size_bytes"] == len(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i["name"] for i in record["inputs"]] == [i.name for i in session.get_inputs()]
    assert record["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert record["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert record["opset"] == 17
    stored = ArtifactStore(settings.model_store).read(record["sha256"])
    assert stored == data


def test_metadata_and_lineage_are_kept(settings, db):
    _register(settings, db, add_constant_model(1.0))
    meta = {"description": "second", "dataset": {"name": "d", "version": "3", "sha256": "a" * 64},
            "params": {"C": 0.5}, "metrics": {"accuracy": 0.9}, "parent_version": 1,
            "aliases": ["challenger"]}
    _register(settings, db, add_constant_model(2.0), metadata=meta)
    _register(settings, db, add_constant_model(3.0), metadata={"parent_version": 2})
    record = service.get_version(db, "m", "challenger")
    assert record["version"] == 2
    assert record["dataset"] == meta["dataset"] and record["params"] == {"C": 0.5}
    assert record["metrics"] == {"accuracy": 0.9} and record["aliases"] == ["challenger"]
    assert record["lineage"] == {"parent_version": 1, "ancestors": [1], "children": [3]}
    assert service.get_version(db, "m", 3)["lineage"]["ancestors"] == [2, 1]


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"this is not a model at all" * 10, "does not parse"),
        (add_constant_model(1.0)[:-7], "does not parse"),
        (checker_failing_model(), "onnx.checker"),
        (unloadable_model(), "onnxruntime cannot load"),
        (b"", "empty"),
    ],
    ids=["garbage", "truncated", "checker", "unloadable", "empty"],
)
def test_bad_files_are_refused_and_nothing_is_stored(settings, db, payload, expected):
    with pytest.raises(InvalidInput, match=expected):
        _register(settings, db, payload)
    assert _stored_files(settings) == []
    assert _version_count(db) == 0
    assert service.list_audit(db) == []


def test_oversize_file_is_refused_before_parsing(settings, db):
    big = settings.with_(max_model_bytes=1000)
    with pytest.raises(PayloadTooLarge, match="GATEWAY_MAX_MODEL_BYTES"):
        _register(big, db, add_constant_model(1.0, width=512))
    assert _stored_files(settings) == [] and _version_count(db) == 0


def test_same_bytes_twice_is_refused_naming_the_version(settings, db):
    data = add_constant_model(5.0)
    _register(settings, db, data)
    with pytest.raises(Conflict, match="already registered as m version 1"):
        _register(settings, db, data)
    assert _version_count(db) == 1
    # another model may hold the same bytes: the store keeps one file for both
    assert _register(settings, db, data, name="other")["version"] == 1
    assert len(_stored_files(settings)) == 1


def test_bad_metadata_is_refused(settings, db):
    for meta, match in [
        ({"colour": "red"}, "unknown metadata keys"),
        ({"metrics": {"acc": "high"}}, "finite number"),
        ({"parent_version": 7}, "not a version"),
        ({"aliases": ["12"]}, "plain number"),
        ({"dataset": {"sha256": "xyz"}}, "64 hex"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(InvalidInput, match=match):
            _register(settings, db, add_constant_model(9.0), metadata=meta)
    assert _version_count(db) == 0


def test_aliases_move_and_every_move_is_audited(settings, db):
    for c in (1.0, 2.0):
        _register(settings, db, add_constant_model(c))
    service.set_alias(db, "m", "champion", 1, "alice", reason="first")
    moved = service.set_alias(db, "m", "champion", "2", "bob", reason="better")
    assert moved["previous"] == 1 and moved["version"] == 2
    assert service.get_version(db, "m", "champion")["version"] == 2
    entries = [e for e in service.list_audit(db) if e["action"] == "alias.set"]
    assert [(e["actor"], e["detail"]["from"], e["detail"]["to"], e["reason"])
            for e in entries] == [("bob", 1, 2, "better"), ("alice", None, 1, "first")]
    service.delete_alias(db, "m", "champion", "carol")
    with pytest.raises(UnknownVersion):
        service.get_version(db, "m", "champion")
    assert service.list_audit(db, limit=1)[0]["action"] == "alias.delete"


def test_archive_keeps_the_record_and_refuses_aliased_versions(settings, db):
    for c in (1.0, 2.0):
        _register(settings, db, add_constant_model(c))
    service.set_alias(db, "m", "champion", 2, "alice")
    with pytest.raises(Conflict, match="aliases"):
        service.archive_version(db, "m", 2, "alice", "old")
    record = service.archive_version(db, "m", 1, "alice", "superseded")
    assert record["stage"] == "archived" and record["archived_reason"] == "superseded"
    assert service.get_version(db, "m", 1)["stage"] == "archived"
    with pytest.raises(Conflict, match="already archived"):
        service.archive_version(db, "m", 1, "alice", "again")
    with pytest.raises(Conflict, match="archived"):
        service.set_alias(db, "m", "old", 1, "alice")


def test_tampered_artifact_is_detected_at_load(settings, db):
    record = _register(settings, db, add_constant_model(1.0))
    store = ArtifactStore(settings.model_store)
    path = store.path_for(record["sha256"])
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        store.read(record["sha256"])


def _register_in_process(url: str, store: str, constant: float, start, results) -> None:
    database = Database(url)
    data = add_constant_model(constant)
    start.wait(30)
    record = service.register_version(database, ArtifactStore(Path(store)), "race", data, None,
                                      f"proc-{constant}", 10_000_000)
    results.put(record["version"])
    database.dispose()


def test_eight_concurrent_processes_get_distinct_version_numbers(settings):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_register_in_process,
                         args=(settings.database_url, str(settings.model_store), float(i),
                               start, results)) for i in range(8)]
    for p in procs:
        p.start()
    start.set()
    versions = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert versions == list(range(1, 9))

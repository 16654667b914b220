"""A full disk under the model store and under the outcome spool, made real: a 2 MiB tmpfs
mounted for the test (root only; the test skips, saying so, where mounting is not permitted)
and filled to the last byte.

What must hold:
- registering a model on a full store answers `507 insufficient_storage` (a read-only store:
  `503 unavailable`), leaves no temp file, creates no registry row, and the artifacts already
  stored still verify; freeing space makes the same registration work;
- the outcome spool on a full disk leaves no half-written file, keeps the rows it could not
  spool in memory, says so in the log and in `gateway_outcome_spool_failures_total`, keeps its
  flusher thread alive, and writes every row once the database returns.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.outcomes.log import OutcomeLog
from gateway.prometheus_metrics import Metrics
from gateway.settings import Settings
from registry.db import Database
from registry.migrate import upgrade
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of
from tests.outcome_rows import logged_ids, outcome

TMPFS_SIZE = "2m"


@contextmanager
def small_tmpfs(path: Path, size: str = TMPFS_SIZE) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the duration; unmounted (lazily if busy) after."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the disk-full tests did not run")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the disk-full "
                    "tests did not run")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)


def fill(mount: Path) -> Path:
    """Write a file until the filesystem refuses one more byte; returns it (delete to free)."""
    filler = mount / f"filler-{uuid.uuid4().hex[:6]}"
    chunk = 1 << 16
    with open(filler, "wb", buffering=0) as handle:
        while chunk:
            try:
                handle.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
    probe = mount / ".probe"
    with pytest.raises(OSError) as refused, open(probe, "wb", buffering=0) as handle:
        handle.write(b"x" * 4096)
    probe.unlink()
    assert refused.value.errno == errno.ENOSPC
    return filler


def files_under(root: Path, skip: str = "filler") -> set[str]:
    """Every regular file below `root` (dot-files too), relative, without the fillers."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(skip)}


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# ---- the model store ----------------------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only (this module replaces the conftest's sqlite/postgresql parametrisation)."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    upgrade(url)
    yield url


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tmpfs") as path:
        yield path


@pytest.fixture
def settings(settings: Settings, mount: Path) -> Settings:
    """The conftest's settings with the model store on the small tmpfs."""
    return settings.with_(model_store=mount / "store")


def upload(client: FlaskClient, headers: dict[str, str], name: str, data: bytes) -> Any:
    return client.post(f"/admin/models/{name}/versions", headers=headers,
                       data={"file": (io.BytesIO(data), "model.onnx"),
                             "metadata": '{"description": "disk-full test"}'},
                       content_type="multipart/form-data")


def registry_state(client: FlaskClient, ops: dict[str, str]) -> tuple[Any, Any]:
    return (client.get("/admin/models", headers=ops).get_json(),
            client.get("/admin/audit", headers=ops).get_json())


def test_registering_on_a_full_store_is_507_and_leaves_no_file_and_no_row(
        client: FlaskClient, settings: Settings, mount: Path, role_tokens: dict[str, str],
        examples_dir: Path, tmp_path: Path) -> None:
    ops = bearer(role_tokens["ops"])
    mlp = (examples_dir / "mlp.onnx").read_bytes()  # 20 KB
    logreg = (examples_dir / "logreg.onnx").read_bytes()  # 5 KB
    first = upload(client, ops, "digits", mlp)
    assert first.status_code == 201, first.get_json()
    store = ArtifactStore(settings.model_store)
    stored_before = files_under(settings.model_store)
    assert stored_before == {f"sha256/{first.get_json()['sha256'][:2]}/"
                             f"{first.get_json()['sha256']}.onnx"}

    filler = fill(mount)
    models_before, audit_before = registry_state(client, ops)
    for name in ("digits", "fresh"):  # a new version of a model, and a model that is new
        refused = upload(client, ops, name, logreg)
        assert refused.status_code == 507, refused.get_json()
        error = error_of(refused)
        assert error["code"] == "insufficient_storage"
        assert "model store is full" in error["message"]
        assert "No space left on device" in error["message"]
        assert "nothing was stored" in error["message"]
    assert files_under(settings.model_store) == stored_before  # no .incoming-* temp file
    assert registry_state(client, ops) == (models_before, audit_before)  # no row, no audit
    assert store.read(first.get_json()["sha256"]) == mlp  # what was stored still verifies
    assert not store.exists(hashlib.sha256(logreg).hexdigest())

    # the CLI says the same in one line, exit status 2
    model_file = tmp_path / "logreg.onnx"
    model_file.write_bytes(logreg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=settings.database_url,
               GATEWAY_MODEL_STORE=str(settings.model_store))
    cli = subprocess.run([sys.executable, "-m", "gateway.cli.main", "models", "register", "digits",
                          str(model_file)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip().splitlines()[-1].startswith(
        "gateway: insufficient_storage: the model store is full"), cli.stderr
    assert files_under(settings.model_store) == stored_before
    assert registry_state(client, ops)[0] == models_before

    # a read-only store is refused too (503: nothing to free), and changes nothing
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, timeout=30)
    try:
        refused = upload(client, ops, "digits", logreg)
        assert refused.status_code == 503, refused.get_json()
        assert error_of(refused)["code"] == "unavailable"
        assert "cannot be written (Read-only file system)" in error_of(refused)["message"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True, timeout=30)
    assert registry_state(client, ops) == (models_before, audit_before)

    # with room again, the same registration works and takes the next number
    again = upload(client, ops, "digits", logreg)
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["version"] == 2
    assert store.read(again.get_json()["sha256"]) == logreg
    assert len(files_under(settings.model_store)) == 2


# ---- the outcome spool ----------------------------------------------------------------------


@pytest.fixture
def unreachable_sqlite(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A migrated SQLite URL whose directory has been moved away (every connect fails with
    "unable to open database file", root or not), and a function that brings it back."""
    home = tmp_path / "outcome-db"
    home.mkdir()
    url = f"sqlite:///{home / 'gateway.db'}"
    upgrade(url)
    away = tmp_path / "outcome-db-away"
    home.rename(away)
    yield url, lambda: away.rename(home)


def test_full_spool_keeps_rows_in_memory_and_leaves_no_half_file(
        mount: Path, unreachable_sqlite: tuple[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    url, database_returns = unreachable_sqlite
    spool = mount / "spool"
    metrics = Metrics()
    database = Database(url)
    # no flusher thread (the test drives the flushes; the next test has one), so every count
    # below is exact
    log = OutcomeLog(database, spool, batch_size=10, max_buffer=1000, metrics=metrics,
                     background=False)
    caplog.set_level(logging.INFO, logger="gateway.outcomes.log")
    try:
        for i in range(10):
            log.record(outcome(i))
        log.flush()
        assert not log.db_ok and log.spooled == 10 and log.depth() == 0
        [spooled_file] = list(spool.iterdir())
        assert not spooled_file.name.startswith(".")

        filler = fill(mount)
        for i in range(10, 35):
            log.record(outcome(i))
        for attempt in (1, 2):
            log.flush()
            # the batch that did not fit went back: all 25 rows are in memory, in order
            assert log.depth() == 25 and log.spooled == 10 and log.dropped == 0
            assert [r["request_id"] for r in log.find_pending("r-00010")] == ["r-00010"]
            assert log.spool_failures == attempt
            # no half-written file, not even a dot-file: the spool holds what it held
            assert list(spool.iterdir()) == [spooled_file]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR
                  and "cannot spool outcomes" in r.getMessage()]
        assert len(errors) == 1, "one error per outage, not one per attempt"
        assert "No space left on device" in errors[0].getMessage()
        text = metrics.render()[0].decode()
        assert sample(text, "gateway_outcome_spool_failures_total") == 2
        assert sample(text, "gateway_outcomes_dropped_total") == 0
        assert sample(text, "gateway_outcome_queue_depth") == 25

        # the database returns while the disk is still full: the spooled file is replayed and
        # the rows held in memory are written, each once
        database_returns()
        log.flush()
        assert log.db_ok and log.depth() == 0 and log.written == 35
        assert list(spool.iterdir()) == []
        assert logged_ids(url) == [f"r-{i:05d}" for i in range(35)]
        filler.unlink()
    finally:
        log.close()
        database.dispose()


def test_flusher_thread_survives_a_full_spool_and_writes_everything_later(
        mount: Path, unreachable_sqlite: tuple[str, Any]) -> None:
    url, database_returns = unreachable_sqlite
    spool = mount / "spool"
    metrics = Metrics()
    database = Database(url)
    log = OutcomeLog(database, spool, flush_seconds=0.02, batch_size=7, max_buffer=1000,
                     metrics=metrics)
    try:
        filler = fill(mount)
        for i in range(40):
            log.record(outcome(i))
        deadline = time.monotonic() + 10
        while log.spool_failures < 20:  # the background thread retries on its own tick
            assert time.monotonic() < deadline, "the flusher stopped retrying"
            time.sleep(0.02)
        assert log._thread is not None and log._thread.is_alive()
        assert log.spooled == 0 and log.dropped == 0 and log.written == 0
        assert files_under(mount) == set(), "a failed spool write left a file behind"

        # room again (the database still down): everything goes to the spool, in complete files
        filler.unlink()
        deadline = time.monotonic() + 10
        while log.spooled < 40:
            assert time.monotonic() < deadline, f"only {log.spooled} rows spooled"
            time.sleep(0.02)
        files = sorted(spool.iterdir())
        assert files and not [p for p in files if p.name.startswith(".")]
        assert sum(len(p.read_bytes().splitlines()) for p in files) == 40

        database_returns()
        deadline = time.monotonic() + 10
        while log.written < 40:
            assert time.monotonic() < deadline, f"only {log.written} rows replayed"
            time.sleep(0.05)
        assert logged_ids(url) == [f"r-{i:05d}" for i in range(40)]
        assert list(spool.iterdir()) == [] and log.depth() == 0
        assert log._thread.is_alive() and log.dropped == 0
        assert sample(metrics.render()[0].decode(), "gateway_outcome_spool_failures_total") \
            == log.spool_failures
    finally:
        log.close()
        database.dispose()

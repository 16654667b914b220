"""Fixtures: real SQLite files and a fresh PostgreSQL database per run, real ONNX models.

PostgreSQL comes from `GATEWAY_TEST_PG_URL` (default: the local server on 127.0.0.1:5432 with
trust auth); each run creates its own database and drops it afterwards. Tests that need it fail
(not skip) when it is unreachable, so CI cannot pass without exercising it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.settings import Settings
from gateway.web.app import create_app
from registry import tokens
from registry.db import Database
from registry.migrate import upgrade

PG_ADMIN = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        with psycopg.connect(_pg_conninfo(PG_ADMIN), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({PG_ADMIN}): {exc}")
    return PG_ADMIN


def create_pg_database(admin_url: str) -> str:
    name = f"mgw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _pg_conninfo(admin_url).rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty registry database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        upgrade(url)
        yield url
        return
    admin = request.getfixturevalue("pg_server")
    url = create_pg_database(admin)
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(admin, url)


@pytest.fixture
def on_sqlite_only(database_url: str) -> None:
    """For a test whose subject does not depend on the registry database: run it once."""
    if not database_url.startswith("sqlite"):
        pytest.skip("does not depend on the registry database: run once, on SQLite")


REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared test Redis; its keys are deleted after."""
    import redis

    prefix = f"mgwtest:{uuid.uuid4().hex[:10]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for these tests ({REDIS_URL}): {exc}")
    yield prefix
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


def settings_for(database_url: str, root: Path, redis_prefix: str) -> Settings:
    return Settings(database_url=database_url, model_store=root / "store", auth=True,
                    max_model_bytes=8 * 1024 * 1024, redis_url=REDIS_URL,
                    redis_prefix=redis_prefix, state_dir=root / "state")


@pytest.fixture
def settings(database_url: str, tmp_path: Path, redis_prefix: str) -> Settings:
    return settings_for(database_url, tmp_path, redis_prefix)


def server_env(settings: Settings) -> dict[str, str]:
    """The environment a `gateway serve` process needs to share this test's stores."""
    env = {"GATEWAY_DATABASE_URL": settings.database_url,
           "GATEWAY_MODEL_STORE": str(settings.model_store),
           "GATEWAY_MODEL_CACHE": str(settings.model_cache),
           "GATEWAY_REDIS_URL": settings.redis_url or "",
           "GATEWAY_REDIS_PREFIX": settings.redis_prefix,
           "GATEWAY_STATE_DIR": str(settings.state_dir)}
    if settings.artifact_key:
        env["GATEWAY_ARTIFACT_KEY"] = settings.artifact_key
    if settings.artifact_old_keys:
        env["GATEWAY_ARTIFACT_OLD_KEYS"] = settings.artifact_old_keys
    return env


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real S3-compatible server (SeaweedFS) for the run; each test takes its own bucket."""
    from tests.s3_server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket of this test's own, with the AWS variables set for in-process boto3."""
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    bucket = seaweed.new_bucket()
    yield bucket
    if seaweed.proc is not None:
        seaweed.drop_bucket(bucket)


@pytest.fixture
def s3_settings(settings: Settings, s3_bucket: str, tmp_path: Path) -> Settings:
    """`settings` with artifacts in this test's bucket, cached under the test's directory."""
    return settings.with_(model_store=f"s3://{s3_bucket}/models",
                          model_cache=tmp_path / "cache")


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["mgw"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def role_tokens(db: Database) -> dict[str, str]:
    return {role: tokens.create_token(db, role, f"test-{role}", "tests") for role in tokens.ROLES}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ops(role_tokens: dict[str, str]) -> dict[str, str]:
    return bearer(role_tokens["ops"])


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.examples import build_examples

    out = tmp_path_factory.mktemp("examples")
    build_examples(out)
    return out


def error_of(response: Any) -> dict[str, Any]:
    """The contract's error object, asserting the shape on the way."""
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return body["error"]


def register_digits(settings: Settings, db: Database, examples_dir: Path) -> dict[str, Any]:
    from registry import service
    from registry.store import ArtifactStore

    store = ArtifactStore(settings.model_store)
    paths = {}
    for name in ("logreg", "forest", "mlp"):
        path = examples_dir / f"{name}.onnx"
        service.register_version(db, store, "digits", path.read_bytes(), None, "tests",
                                 settings.max_model_bytes)
        paths[name] = path
    import numpy as np

    data = np.load(examples_dir / "digits_test.npz")
    return {"paths": paths, "X": data["X"], "y": data["y"], "versions": {"logreg": 1,
                                                                          "forest": 2, "mlp": 3}}


@pytest.fixture
def digits(settings: Settings, db: Database, examples_dir: Path) -> dict[str, Any]:
    """The example models registered as `digits` 1 (logreg), 2 (forest), 3 (mlp)."""
    return register_digits(settings, db, examples_dir)


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path
                 ) -> Iterator[dict[str, Any]]:
    """A SQLite registry with `digits` 1-3 and a token per role, on a Redis prefix of its own,
    kept for a whole module: for modules whose tests share one live gateway (booting one
    costs seconds) and whose subject does not depend on the database."""
    import redis

    root = tmp_path_factory.mktemp("stack")
    url = f"sqlite:///{root / 'gateway.db'}"
    upgrade(url)
    prefix = f"mgwtest:{uuid.uuid4().hex[:10]}:"
    settings = settings_for(url, root, prefix)
    database = Database(url)
    stack = {"settings": settings, "db": database, "root": root,
             "digits": register_digits(settings, database, examples_dir),
             "role_tokens": {role: tokens.create_token(database, role, f"test-{role}", "tests")
                             for role in tokens.ROLES}}
    yield stack
    database.dispose()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def cli(settings, monkeypatch, tmp_path):
    """`gateway ...` in this process, on this test's databases, stores and Redis prefix:
    `status, out, err = cli(capsys, "models", "show", ...)`."""
    from gateway.cli.main import main as cli_main

    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    for key, value in server_env(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def run(capsys, *argv: str) -> tuple[int, str, str]:
        status = cli_main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run

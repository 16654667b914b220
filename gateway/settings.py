"""One typed settings object, read once from the environment (and an optional `.env`).

Each setting is declared once, as a field of `Settings` with its variable, bounds and doc
(`setting(...)`): `Settings.from_env` parses every declared variable from that declaration, and
the README's configuration table is generated from it (`python -m gateway.settings` prints it;
`tests/test_settings.py` fails when the README and the declaration differ). Fields without a
variable are tunables that tests set through `Settings(...)` or `with_`.

Everything configurable lives here so that `create_app(settings)` in tests builds a fully
isolated gateway without touching process-wide environment variables.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the gateway cannot run with."""


@dataclass(frozen=True)
class Declared:
    """How one field is configured: its variable, bounds, and the README's words for it."""

    env: str
    doc: str
    shown: str  # the default as the README shows it
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()  # a string must start with one of these


def setting(default: Any, env: str, doc: str, *, shown: str | None = None,
            minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
            secret: bool = False) -> Any:
    """A field read from `env`; `secret` keeps it out of `repr` (logs)."""
    declared = Declared(env, doc, shown if shown is not None else f"`{default}`", minimum,
                        maximum, choices, prefixes)
    return field(default=default, repr=not secret, metadata={"declared": declared})


_ON = {"1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no"}


def _parse(kind: Any, raw: str, spec: Declared) -> Any:
    key = spec.env
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered not in _ON | _OFF:
            raise SettingsError(f"{key} must be on or off, got {raw!r}")
        return lowered in _ON
    if kind in (int, float):
        try:
            value: float = int(raw) if kind is int else float(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SettingsError(f"{key} must be {what}, got {raw!r}") from None
        low = -math.inf if spec.minimum is None else spec.minimum
        high = math.inf if spec.maximum is None else spec.maximum
        if not low <= value <= high:  # also refuses NaN
            bounds = (f"from {spec.minimum:g} to {spec.maximum:g}" if spec.maximum is not None
                      else f">= {spec.minimum:g}")
            raise SettingsError(f"{key} must be {bounds}, got {raw!r}")
        return value
    if spec.choices and raw not in spec.choices:
        raise SettingsError(f"{key} must be one of {', '.join(spec.choices)}, got {raw!r}")
    if spec.prefixes and not raw.startswith(spec.prefixes):
        raise SettingsError(f"{key} must start with {' or '.join(spec.prefixes)}")
    return Path(raw) if kind is Path else raw


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int."""
    if isinstance(annotation, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0]
    return annotation


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration. Defaults need no server: SQLite file, embedded Redis."""

    database_url: str = setting(
        "sqlite:///gateway.db", "GATEWAY_DATABASE_URL",
        "registry database; `postgresql+psycopg://user@host/db` in production",
        shown="`sqlite:///gateway.db` (working directory)",
        prefixes=("sqlite:", "postgresql"), secret=True)
    redis_url: str | None = setting(
        None, "GATEWAY_REDIS_URL", "live traffic policies, registry announcements",
        shown="unset: a private `redis-server` started by the gateway")
    model_store: str = setting(
        "model-store", "GATEWAY_MODEL_STORE",
        "artifacts and datasets, kept by sha256: a directory, or `s3://bucket/prefix` in "
        "S3-compatible object storage shared by every replica (configured by the standard "
        "`AWS_*` variables, `AWS_ENDPOINT_URL` included)",
        shown="`model-store/` (working directory)")
    model_cache: Path = setting(
        Path("model-cache"), "GATEWAY_MODEL_CACHE",
        "with an `s3://` store: where this replica keeps the artifacts it fetched (verified on "
        "every load; a warm cache needs no download after a restart)",
        shown="`model-cache/` (working directory)")
    model_cache_bytes: int = setting(
        10 * 1024 * MIB, "GATEWAY_MODEL_CACHE_BYTES",
        "bound of that cache; least recently used artifacts go first", shown="10 GiB",
        minimum=MIB)
    model_cache_plaintext: bool = setting(
        False, "GATEWAY_MODEL_CACHE_PLAINTEXT",
        "with a key: keep cached artifacts decrypted (faster loads, models in clear on the "
        "replica's disk)", shown="`off`")
    artifact_key: str | None = setting(
        None, "GATEWAY_ARTIFACT_KEY",
        "32 random bytes, base64: artifacts and datasets are encrypted at rest (AES-256-GCM), "
        "local or S3; see [docs/deployment.md](docs/deployment.md) for rotation",
        shown="unset: stored as they are", secret=True)
    artifact_old_keys: str | None = setting(
        None, "GATEWAY_ARTIFACT_OLD_KEYS",
        "comma-separated earlier keys, still accepted for reading while `gateway store "
        "rotate-key` re-encrypts under the new one", shown="unset", secret=True)
    state_dir: Path = setting(
        Path(".gateway"), "GATEWAY_STATE_DIR",
        "the embedded Redis's socket, the outcome spool, metrics files, the cookie key",
        shown="`.gateway/` (working directory)")
    auth: bool = setting(True, "GATEWAY_AUTH",
                         "`off` opens every route (local experiments only; a warning is logged)",
                         shown="`on`")
    secret_key: str | None = setting(
        None, "GATEWAY_SECRET_KEY", "signs the dashboard's session cookie",
        shown="unset: a random key kept in the state directory", secret=True)
    max_body_bytes: int = setting(4 * MIB, "GATEWAY_MAX_BODY_BYTES",
                                  "limit for inference and feedback bodies", shown="4 MiB",
                                  minimum=1024)
    max_model_bytes: int = setting(512 * MIB, "GATEWAY_MAX_MODEL_BYTES",
                                   "limit for uploaded model files", shown="512 MiB",
                                   minimum=1024)
    max_dataset_bytes: int = setting(
        16 * MIB, "GATEWAY_MAX_DATASET_BYTES",
        "limit for a dataset uploaded to `POST /admin/models/{name}/versions/{v}/evaluations` "
        "(evaluated inside the request; larger ones with the local `gateway models evaluate`)",
        shown="16 MiB", minimum=1024)
    max_batch: int = setting(1024, "GATEWAY_MAX_BATCH", "rows per inference request",
                             shown="1024", minimum=1)
    max_tensor_elements: int = setting(4_000_000, "GATEWAY_MAX_TENSOR_ELEMENTS",
                                       "values per inference request, over all inputs",
                                       shown="4,000,000", minimum=1)
    request_timeout_seconds: float = setting(
        20.0, "GATEWAY_REQUEST_TIMEOUT",
        "time to receive a whole request (headers and body); slower clients get `408` and the "
        "worker moves on (`gateway/web/workers.py`)", shown="20 (s)", minimum=1)
    keepalive_seconds: int = setting(
        5, "GATEWAY_KEEPALIVE_SECONDS",
        "how long a client connection is kept open between requests (HTTP/1.1 keep-alive, "
        "served without threads by the sync worker); 0 closes every connection after one "
        "response", shown="5 (s)", minimum=0)
    outcome_buffer: int = setting(
        100_000, "GATEWAY_OUTCOME_BUFFER",
        "outcome rows a worker keeps in memory while neither the database nor the spool takes "
        "them; beyond it the oldest are dropped and counted (`gateway_outcomes_dropped_total`)",
        shown="100000", minimum=1)
    outcome_retention_days: int = setting(
        90, "GATEWAY_OUTCOME_RETENTION_DAYS",
        "what `gateway outcomes prune` deletes by default: outcomes and feedback older than "
        "this", shown="90", minimum=1)
    feedback_wait_seconds: float = setting(
        1.0, "GATEWAY_FEEDBACK_WAIT_SECONDS",
        "how long feedback for an id not yet in the database waits for its outcome to land "
        "before answering `404`", shown="1 (s)", minimum=0, maximum=30)
    shadow_workers: int = setting(
        1, "GATEWAY_SHADOW_WORKERS",
        "shadow threads of the agent (of each worker without `gateway serve`)", shown="1",
        minimum=1)
    shadow_queue: int = setting(
        64, "GATEWAY_SHADOW_QUEUE",
        "queued shadow copies in the agent (in each worker without `gateway serve`); a copy "
        "that finds the queue full is dropped and counted", shown="64", minimum=1)
    session_cache_count: int = setting(32, "GATEWAY_SESSION_CACHE_COUNT",
                                       "onnxruntime sessions kept per worker (LRU)",
                                       shown="32", minimum=1)
    session_cache_bytes: int = setting(2048 * MIB, "GATEWAY_SESSION_CACHE_BYTES",
                                       "model bytes kept loaded per worker (LRU)",
                                       shown="2 GiB", minimum=1)
    intra_op_threads: int = setting(1, "GATEWAY_INTRA_OP_THREADS",
                                    "onnxruntime threads per session (one process per core)",
                                    shown="1", minimum=0)
    bind: str = setting("127.0.0.1:8000", "GATEWAY_BIND",
                        "where `gateway serve` listens (`--bind`)")
    workers: int = setting(2, "GATEWAY_WORKERS", "gunicorn worker processes (`--workers`)",
                           shown="2", minimum=1)
    worker_class: str = setting(
        "sync", "GATEWAY_WORKER_CLASS",
        "`sync` or `gthread` (`--worker-class`); why `sync`: "
        "[docs/performance.md](docs/performance.md)", choices=("sync", "gthread"))
    threads: int = setting(4, "GATEWAY_THREADS", "threads per gthread worker (`--threads`)",
                           shown="4", minimum=1)
    worker_timeout: int = setting(30, "GATEWAY_WORKER_TIMEOUT",
                                  "gunicorn restarts a worker silent for this long",
                                  shown="30 (s)", minimum=1)
    remote_url: str | None = setting(
        None, "GATEWAY_URL",
        "the `gateway` command drives this running gateway over HTTP (as `--url`) instead of "
        "this host's database", shown="unset: this host's stores",
        prefixes=("http://", "https://"))
    remote_token: str | None = setting(
        None, "GATEWAY_TOKEN", "the bearer token for `GATEWAY_URL` (as `--token`)",
        shown="unset", secret=True)
    access_log: str | None = setting(None, "GATEWAY_ACCESS_LOG",
                                     "gunicorn access log (`-` for stdout)", shown="unset: none")
    log_level: str = setting("info", "GATEWAY_LOG_LEVEL", "gunicorn's log level",
                             choices=("debug", "info", "warning", "error", "critical"))
    redis_prefix: str = setting("mgw:", "GATEWAY_REDIS_PREFIX",
                                "key prefix in Redis (gateways sharing one Redis and one "
                                "database share it)")
    input_sample_rate: float = setting(
        0.05, "GATEWAY_INPUT_SAMPLE_RATE",
        "share of primary requests whose inputs are kept in the outcome log for drift (0 turns "
        "it off; inputs may be sensitive)", shown="0.05", minimum=0, maximum=1)
    drift_threshold: float = setting(0.2, "GATEWAY_DRIFT_THRESHOLD",
                                     "PSI above which a version's inputs count as drifted",
                                     shown="0.2", minimum=0)
    drift_window: int = setting(2000, "GATEWAY_DRIFT_WINDOW",
                                "newest sampled inputs per version that drift is computed on",
                                shown="2000", minimum=10)
    drift_refresh_seconds: float = setting(30.0, "GATEWAY_DRIFT_REFRESH_SECONDS",
                                           "how long a worker reuses a computed drift score",
                                           shown="30 (s)", minimum=0)
    rollout_interval_seconds: float = setting(
        10.0, "GATEWAY_ROLLOUT_INTERVAL",
        "how often the rollout controller (in the agent; in each process without one) looks at "
        "running rollouts",
        shown="10 (s)", minimum=0.05)
    demo_rate: float = setting(
        20.0, "GATEWAY_DEMO_RATE",
        "requests per second of `gateway demo`'s simulated application (loopback only; "
        "`--no-traffic` turns it off)", shown="20", minimum=0.1, maximum=200)
    # tunables without a variable: tests set them
    registry_poll_seconds: float = 0.5
    policy_refresh_seconds: float = 1.0
    outcome_flush_seconds: float = 0.2
    token_cache_seconds: float = 0.5
    # set by `gateway serve` for its workers (MGW_AGENT_SOCKET), never by users: the agent's
    # socket, where outcome rows go (gateway.agent)
    agent_socket: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read every declared `GATEWAY_*` variable; a `.env` in the working directory adds
        missing ones. An empty variable means the default."""
        if env is None:
            from dotenv import dotenv_values

            merged = {k: v for k, v in dotenv_values(".env").items() if v is not None}
            merged.update(os.environ)
            env = merged
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item, spec in declared():
            raw = env.get(spec.env)
            if raw:
                values[item.name] = _parse(_base_type(hints[item.name]), raw, spec)
        if env.get("MGW_AGENT_SOCKET"):
            values["agent_socket"] = Path(env["MGW_AGENT_SOCKET"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests build variants this way)."""
        return replace(self, **changes)


def declared() -> list[tuple[Any, Declared]]:
    """(field, declaration) for every setting read from the environment, in README order."""
    return [(f, f.metadata["declared"]) for f in fields(Settings) if "declared" in f.metadata]


def readme_table() -> str:
    """The README's configuration table, as the declarations say it."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{spec.env}` | {spec.shown} | {spec.doc} |" for _, spec in declared()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_table())

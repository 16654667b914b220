"""One typed settings object, read once from the environment (and an optional `.env`).

Everything configurable lives here so that `create_app(settings)` in tests builds a fully
isolated gateway without touching process-wide environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the gateway cannot run with."""


def _int(env: dict[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{key} must be >= {minimum}, got {value}")
    return value


def _float(env: dict[str, str], key: str, default: float, minimum: float,
           maximum: float | None = None) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None
    if not (value >= minimum and (maximum is None or value <= maximum)):  # also refuses NaN
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise SettingsError(f"{key} must be {bounds}, got {raw!r}")
    return value


def _bool(env: dict[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "on", "true", "yes"}:
        return True
    if lowered in {"0", "off", "false", "no"}:
        return False
    raise SettingsError(f"{key} must be on or off, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration. Defaults need no server: SQLite file, embedded Redis."""

    # repr=False: a logged Settings must not carry a password or the signing key
    database_url: str = field(default="sqlite:///gateway.db", repr=False)
    redis_url: str | None = None
    model_store: Path = Path("model-store")
    auth: bool = True
    max_body_bytes: int = 4 * MIB
    max_model_bytes: int = 512 * MIB
    max_batch: int = 1024
    session_cache_count: int = 32
    session_cache_bytes: int = 2048 * MIB
    intra_op_threads: int = 1
    registry_poll_seconds: float = 0.5
    redis_prefix: str = "mgw:"
    state_dir: Path = Path(".gateway")
    shadow_workers: int = 1
    shadow_queue: int = 64
    policy_refresh_seconds: float = 1.0
    outcome_flush_seconds: float = 0.2
    outcome_buffer: int = 100_000
    feedback_wait_seconds: float = 1.0
    outcome_retention_days: int = 90
    secret_key: str | None = field(default=None, repr=False)
    token_cache_seconds: float = 0.5
    request_timeout_seconds: float = 20.0
    max_tensor_elements: int = 4_000_000
    # share of primary requests whose inputs are kept in the outcome log (drift's live side)
    input_sample_rate: float = 0.05
    drift_threshold: float = 0.2  # PSI above which a version's inputs count as drifted
    drift_window: int = 2000  # newest sampled inputs per version that drift is computed on
    drift_refresh_seconds: float = 30.0  # how long a worker reuses a computed drift score
    rollout_interval_seconds: float = 10.0  # how often the rollout controller looks
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read `GATEWAY_*` variables; a `.env` in the working directory adds missing ones."""
        if env is None:
            from dotenv import dotenv_values

            merged = {k: v for k, v in dotenv_values(".env").items() if v is not None}
            merged.update(os.environ)
            env = merged
        defaults = cls()
        database_url = env.get("GATEWAY_DATABASE_URL") or defaults.database_url
        if not database_url.startswith(("sqlite:", "postgresql")):
            raise SettingsError(
                "GATEWAY_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://..."
            )
        return cls(
            database_url=database_url,
            redis_url=env.get("GATEWAY_REDIS_URL") or None,
            model_store=Path(env.get("GATEWAY_MODEL_STORE") or defaults.model_store),
            auth=_bool(env, "GATEWAY_AUTH", True),
            max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", defaults.max_body_bytes, 1024),
            max_model_bytes=_int(env, "GATEWAY_MAX_MODEL_BYTES", defaults.max_model_bytes, 1024),
            max_batch=_int(env, "GATEWAY_MAX_BATCH", defaults.max_batch, 1),
            session_cache_count=_int(
                env, "GATEWAY_SESSION_CACHE_COUNT", defaults.session_cache_count, 1
            ),
            session_cache_bytes=_int(
                env, "GATEWAY_SESSION_CACHE_BYTES", defaults.session_cache_bytes, 1
            ),
            intra_op_threads=_int(env, "GATEWAY_INTRA_OP_THREADS", defaults.intra_op_threads, 0),
            redis_prefix=env.get("GATEWAY_REDIS_PREFIX") or defaults.redis_prefix,
            state_dir=Path(env.get("GATEWAY_STATE_DIR") or defaults.state_dir),
            secret_key=env.get("GATEWAY_SECRET_KEY") or None,
            shadow_workers=_int(env, "GATEWAY_SHADOW_WORKERS", defaults.shadow_workers, 1),
            shadow_queue=_int(env, "GATEWAY_SHADOW_QUEUE", defaults.shadow_queue, 1),
            outcome_retention_days=_int(env, "GATEWAY_OUTCOME_RETENTION_DAYS",
                                        defaults.outcome_retention_days, 1),
            outcome_buffer=_int(env, "GATEWAY_OUTCOME_BUFFER", defaults.outcome_buffer, 1),
            request_timeout_seconds=_int(env, "GATEWAY_REQUEST_TIMEOUT",
                                         int(defaults.request_timeout_seconds), 1),
            max_tensor_elements=_int(env, "GATEWAY_MAX_TENSOR_ELEMENTS",
                                     defaults.max_tensor_elements, 1),
            input_sample_rate=_float(env, "GATEWAY_INPUT_SAMPLE_RATE",
                                     defaults.input_sample_rate, 0.0, 1.0),
            drift_threshold=_float(env, "GATEWAY_DRIFT_THRESHOLD", defaults.drift_threshold,
                                   0.0),
            drift_window=_int(env, "GATEWAY_DRIFT_WINDOW", defaults.drift_window, 10),
            drift_refresh_seconds=_float(env, "GATEWAY_DRIFT_REFRESH_SECONDS",
                                         defaults.drift_refresh_seconds, 0.0),
            rollout_interval_seconds=_float(env, "GATEWAY_ROLLOUT_INTERVAL",
                                            defaults.rollout_interval_seconds, 0.05),
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests build variants this way)."""
        return replace(self, **changes)

"""Run the gateway under gunicorn with the repo's config (`gateway/gunicorn_conf.py`)."""

from __future__ import annotations

import os
import sys

from gateway.settings import Settings


def gunicorn_argv(bind: str, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "-c", "python:gateway.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "gateway.app:create_app()",
    ]


def serve(settings: Settings, bind: str, workers: int, env: dict[str, str] | None = None) -> None:
    """Migrate the schema, then replace this process with gunicorn (signals reach it directly)."""
    from registry.migrate import upgrade

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    upgrade(settings.database_url)
    os.execvpe(sys.executable, gunicorn_argv(bind, workers), env or dict(os.environ))  # noqa: S606

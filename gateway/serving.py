"""Run the gateway under gunicorn with the repo's config (`gateway/gunicorn_conf.py`).

With no `GATEWAY_REDIS_URL`, this process starts the private embedded Redis first, hands its
address to gunicorn's workers, and stops it after gunicorn has exited: it owns it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gateway.settings import Settings


def gunicorn_argv(bind: str, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "-c", "python:gateway.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "gateway.app:create_app()",
    ]


def fresh_metrics_dir(settings: Settings) -> Path:
    """An empty directory for prometheus-client's multiprocess files (stale ones would add
    counts from a previous run)."""
    path = (settings.state_dir / "metrics").resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def serve(settings: Settings, bind: str, workers: int) -> int:
    """Migrate the schema, then run gunicorn until it exits; returns its exit status."""
    from registry.migrate import upgrade

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    upgrade(settings.database_url)
    env = dict(os.environ)
    embedded = None
    started = False
    if not settings.redis_url:
        from gateway.redis_embedded import EmbeddedRedis

        embedded = EmbeddedRedis(settings.state_dir)
        started = embedded.ensure()
        env["GATEWAY_REDIS_URL"] = embedded.url
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(settings))
    proc = subprocess.Popen(gunicorn_argv(bind, workers), env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to gunicorn too
    try:
        return proc.wait()
    finally:
        if embedded is not None and started:
            embedded.stop()

"""Run the gateway under gunicorn with the repo's config (`gateway/web/gunicorn_conf.py`).

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
        "-c", "python:gateway.web.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "gateway.web.app:create_app()",
    ]


def process_tag(pid: int) -> str | None:
    """`<pid>-<start time>`: names one process for good, unlike a pid, which is reused. None
    when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): the pid alone
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}-0"
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"


def own_metrics_dir(settings: Settings) -> Path:
    """An empty directory of this `gateway serve` for prometheus-client's multiprocess files.

    Each serve process has its own (`<state dir>/metrics/<pid>-<start time>`), so a second
    gateway started in the same directory (blue/green, a restart while the old one drains)
    leaves the first one's counters alone. Directories of processes that are gone are removed
    here; the owner removes its own on exit (`serve`)."""
    root = (settings.state_dir / "metrics").resolve()
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        pid, sep, _ = entry.name.partition("-")
        if entry.is_dir() and sep and pid.isascii() and pid.isdigit():
            if process_tag(int(pid)) != entry.name:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and entry.suffix == ".db":  # the layout before per-process dirs
            entry.unlink(missing_ok=True)
    tag = process_tag(os.getpid())
    path = root / (tag or str(os.getpid()))
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
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
    metrics_dir = own_metrics_dir(settings)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    proc = subprocess.Popen(gunicorn_argv(bind, workers), env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to gunicorn too
    try:
        return proc.wait()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None and started:
            embedded.stop()

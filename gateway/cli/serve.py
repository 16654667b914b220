"""Run the gateway under gunicorn with the repo's config (`gateway/web/gunicorn_conf.py`).

With no `GATEWAY_REDIS_URL`, this process starts the private embedded Redis first, hands its
address to gunicorn's workers, and stops it after gunicorn has exited: it owns it. It also
starts the agent (`gateway.agent`), which writes the workers' outcomes and drives rollouts,
restarts it whenever it dies while gunicorn runs, and stops it last, once every worker has
sent what it had.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.agent.channel import socket_path
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


class Agent:
    """The agent process of this `gateway serve`: started, restarted while gunicorn runs,
    stopped by its PID."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self.restarts = 0

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process; `wait_ready` then waits for its socket. `gateway serve` starts
        gunicorn in between, so the two boot side by side (a worker that is ready first
        writes its first rows itself, as it does while the agent restarts)."""
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.agent.main", "--socket", str(self.socket)],
            env=self._env, start_new_session=True)  # Ctrl-C is for gunicorn; we stop it last

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway agent did not start; see the log above")
            time.sleep(0.02)

    def supervise(self, gunicorn: subprocess.Popen[bytes]) -> None:
        """Restart the agent whenever it exits while gunicorn still serves; meanwhile the
        workers keep the rows it refuses."""
        while not self._stopping.wait(0.5) and gunicorn.poll() is None:
            if self._proc is not None and self._proc.poll() is not None:
                self.restarts += 1
                if self._env.get("PROMETHEUS_MULTIPROC_DIR"):
                    _forget_metrics(self._env["PROMETHEUS_MULTIPROC_DIR"], self._proc.pid)
                print(f"[agent] exited with {self._proc.returncode}; restarting it",
                      file=sys.stderr, flush=True)
                try:
                    self.start()
                except RuntimeError as exc:
                    print(f"[agent] {exc}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stopping.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def _forget_metrics(directory: str, pid: int) -> None:
    """Drop a dead agent's live gauges (its counters stay, as a dead worker's do)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def serve(settings: Settings, bind: str, workers: int,
          on_stop: Callable[[], None] | None = None) -> int:
    """Migrate the schema, then run gunicorn until it exits; returns its exit status.
    `on_stop` runs as soon as a stop is asked for (SIGINT, SIGTERM), before gunicorn drains:
    `gateway demo` stops its simulated application there, so that it does not knock on a
    closing door."""
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
    agent = Agent(socket_path(settings.state_dir, os.getpid()), env)
    env["MGW_AGENT_SOCKET"] = str(agent.socket)
    agent.spawn()
    proc = subprocess.Popen(gunicorn_argv(bind, workers), env=env)
    try:
        agent.wait_ready()
    except RuntimeError:
        proc.terminate()
        proc.wait(30)
        agent.stop()
        raise
    supervisor = threading.Thread(target=agent.supervise, args=(proc,), name="agent-supervisor",
                                  daemon=True)
    supervisor.start()

    def stopping() -> None:
        if on_stop is not None:
            threading.Thread(target=on_stop, name="on-stop", daemon=True).start()

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM:
            stopping()
        proc.send_signal(signum)

    def interrupted(_signum: int, _frame: object) -> None:
        stopping()  # the terminal sends SIGINT to gunicorn too: nothing to forward

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGINT, interrupted)
    try:
        return proc.wait()
    finally:
        agent.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None and started:
            embedded.stop()

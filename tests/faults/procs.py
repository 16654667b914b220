"""Process-tree helpers: find the gunicorn master and workers behind a `gateway_server`.

psutil is not a dependency, so children are found from `/proc/<pid>/stat` (field 4 is the
parent pid), which works on every Linux kernel (`/proc/<pid>/task/*/children` needs
CONFIG_PROC_CHILDREN).
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[1])


def children(pid: int) -> set[int]:
    """Live (not zombie) children of `pid`."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.add(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def serve_process(base: str) -> int:
    """The `gateway serve` process this test started for `base` (a child of this process)."""
    bind = base.removeprefix("http://")
    found = [pid for pid in children(os.getpid())
             if "serve" in cmdline(pid) and bind in cmdline(pid)]
    assert len(found) == 1, f"expected one `gateway serve` for {bind}, found {found}"
    return found[0]


def gunicorn_master(base: str) -> int:
    serve = serve_process(base)
    found = [pid for pid in children(serve) if "gunicorn" in " ".join(cmdline(pid))]
    assert len(found) == 1, f"expected one gunicorn master under {serve}, found {found}"
    return found[0]


def worker_pids(master: int) -> set[int]:
    return children(master)

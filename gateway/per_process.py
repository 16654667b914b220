"""Start background work once per process: threads do not survive gunicorn's fork, so each
worker must start its own, exactly once, however many request threads race to do it."""

from __future__ import annotations

import os
import threading


class OncePerProcess:
    def __init__(self) -> None:
        self._pid: int | None = None
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """True for the first caller in this process, False for every later one."""
        pid = os.getpid()
        if self._pid == pid:
            return False
        with self._lock:
            if self._pid == pid:
                return False
            self._pid = pid
            return True

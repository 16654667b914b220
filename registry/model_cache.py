"""A replica's local copy of the artifacts it fetched from object storage, bounded in bytes.

Files sit where the local store would put them (`<dir>/sha256/<ab>/<sha256>.onnx`), as the
bucket holds them (sealed when a key is set) unless plaintext caching is asked for. A file's
modification time is its last use: loading one touches it, and when the cache is over its bound
the least recently used files go first (never the one just added). Every load verifies the
sha256 again, so a cache file damaged on disk is dropped and fetched anew instead of served.

Several processes share one cache directory (a replica's workers and its agent): files appear
by atomic rename, a per-artifact lock file keeps two of them from downloading the same object at
once, and a file evicted under a reader only costs that reader a new download.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from registry.store import relative_path

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, root: Path | str, max_bytes: int, *, plaintext: bool = False) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.plaintext = plaintext

    def path_for(self, sha256: str) -> Path:
        return self.root / relative_path(sha256)

    def touch(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)

    @contextlib.contextmanager
    def fill_lock(self, sha256: str) -> Iterator[None]:
        """Held while one process downloads `sha256`; the others wait, then find the file."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / sha256, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def drop(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(sha256).unlink()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached artifact."""
        found = []
        for path in (self.root / "sha256").glob("*/*.onnx"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path) -> list[Path]:
        """Remove least recently used files until the cache fits its bound."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
                log.info("model cache over %d bytes: evicted %s", self.max_bytes, path.name)
            total -= size
        return removed

"""Artifacts kept by content: `<root>/sha256/<ab>/<sha256>.onnx`, written once, verified on read.

A version names its artifact by sha256, so a file is never overwritten: writing bytes that are
already present is a no-op after checking them, and a file whose bytes no longer hash to its
name is reported as corrupt instead of being served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


class ArtifactError(Exception):
    """The store cannot provide the requested artifact."""


class ArtifactMissing(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactError(f"not a sha256 digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / f"{sha256}.onnx"

    def put(self, data: bytes) -> str:
        """Store `data` atomically (temp file, fsync, rename) and return its sha256."""
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            self.read(digest)  # an existing file must still be intact; raises if not
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o444)
            # link() refuses to replace an existing file, unlike rename(): a concurrent writer
            # of the same bytes wins and we keep its file.
            with contextlib.suppress(FileExistsError):
                os.link(tmp_name, target)
        finally:
            os.unlink(tmp_name)
        return digest

    def read(self, sha256: str) -> bytes:
        """The artifact's bytes, after checking they still hash to `sha256`."""
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {sha256} is missing from {self.root}") from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactCorrupt(
                f"artifact {sha256} is corrupt on disk (its bytes hash to {actual})"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

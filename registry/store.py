"""Artifacts kept by content: `<root>/sha256/<ab>/<sha256>.onnx`, written once, verified on read.

A version names its artifact by sha256, so a good file is never overwritten: writing bytes that
are already present is a no-op after checking them, and a file whose bytes no longer hash to its
name is reported as corrupt instead of being served. Writing the right bytes again replaces a
corrupt file (they are checked against the name first), which is how ops repair one.

A write that fails (disk full, read-only volume) leaves nothing behind: the bytes go to a temp
file that is removed on any error, and the artifact appears under its name only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from pathlib import Path


class ArtifactError(Exception):
    """The store cannot provide the requested artifact."""


class ArtifactMissing(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


class ArtifactStoreFull(ArtifactError):
    """The store's filesystem has no room (or quota) left for an artifact; nothing was kept."""


class ArtifactStoreUnwritable(ArtifactError):
    """The store's filesystem refused the write for another reason (read-only, permissions)."""


log = logging.getLogger(__name__)

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


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
        """Store `data` atomically (temp file, fsync, link) and return its sha256.

        Raises `ArtifactStoreFull` when the disk is full and `ArtifactStoreUnwritable` on other
        write errors; either way no temp file is left and no artifact appears.
        """
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            try:
                self.read(digest)  # an existing file must still be intact
                return digest
            except ArtifactCorrupt as exc:
                # `data` hashes to the name, so it is exactly what the file should hold
                log.warning("%s; replacing it with the uploaded bytes, which match", exc)
                self._write(target, data, replace=True)
                return digest
        self._write(target, data, replace=False)
        return digest

    def _write(self, target: Path, data: bytes, replace: bool) -> None:
        """Write `data` to a temp file next to `target`, fsync it, then give it `target`'s name:
        by link() (which refuses to replace, so a concurrent writer of the same bytes wins and
        we keep its file) or, to repair a corrupt file, by an atomic rename over it."""
        tmp_name: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o444)
            if replace:
                os.replace(tmp_name, target)
                tmp_name = None
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(tmp_name, target)
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            log.error("cannot write artifact %s (%d bytes) under %s: %s", target.name,
                      len(data), self.root, reason)
            if exc.errno in NO_SPACE:
                raise ArtifactStoreFull(
                    f"the model store is full ({reason}): a {len(data)}-byte artifact does not "
                    "fit; nothing was stored. Free space on the GATEWAY_MODEL_STORE volume and "
                    "send it again"
                ) from None
            raise ArtifactStoreUnwritable(
                f"the model store cannot be written ({reason}); nothing was stored"
            ) from None
        finally:
            if tmp_name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)

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
                f"artifact {sha256} failed its sha256 check: the stored file is corrupt on disk "
                f"(its bytes hash to {actual}) and is not served; restore the file, or upload "
                "the same .onnx again to rewrite it"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

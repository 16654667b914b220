"""Artifacts kept by content: `<root>/sha256/<ab>/<sha256>.onnx`, written once, verified on read.

A version names its artifact by sha256 (of the plaintext, sealed or not), so a good file is
never overwritten: writing bytes that are already present is a no-op after checking them, and a
file whose bytes no longer hash to its name is reported as corrupt instead of being served.
Writing the right bytes again replaces a corrupt file (they are checked against the name
first), which is how ops repair one.

A write that fails (disk full, read-only volume) leaves nothing behind: the bytes go to a temp
file that is removed on any error, and the artifact appears under its name only when complete.

With a key (`registry.sealing`) every file is sealed (AES-256-GCM); files written before the key
was set stay readable as they are until `gateway store rotate-key` seals them. This module is
the local store; `registry.object_store` keeps the same artifacts in S3-compatible storage, and
`registry.stores.open_store` picks one from `GATEWAY_MODEL_STORE`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from registry.sealing import (
    MAGIC,
    Keyring,
    Readable,
    SealError,
    UnknownKey,
    Writable,
    header_key_id,
    open_chunks,
    seal_chunks,
)


class ArtifactError(Exception):
    """The store cannot provide the requested artifact."""


class ArtifactMissing(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


class ArtifactUnreadable(ArtifactError):
    """The artifact does not open with the key its header names: altered, or a false key."""


class ArtifactKeyMissing(ArtifactUnreadable):
    """The artifact is sealed with a key this process does not have."""


class ArtifactStoreFull(ArtifactError):
    """The store's filesystem has no room (or quota) left for an artifact; nothing was kept."""


class ArtifactStoreUnwritable(ArtifactError):
    """The store's filesystem refused the write for another reason (read-only, permissions)."""


class ArtifactStoreUnavailable(ArtifactError):
    """The store cannot be reached (object storage down); nothing was stored."""


log = logging.getLogger(__name__)

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
READ_CHUNK = 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ArtifactError(f"not a sha256 digest: {sha256!r}")
    return sha256


def relative_path(sha256: str) -> str:
    """Where an artifact lives under a store's root (a directory or a bucket prefix)."""
    return f"sha256/{check_digest(sha256)[:2]}/{sha256}.onnx"


class Store(Protocol):
    """What the registry, the runtime and the lifecycle need from an artifact store."""

    keyring: Keyring

    def put(self, data: bytes) -> str: ...

    def read(self, sha256: str) -> bytes: ...

    def load_path(self, sha256: str) -> contextlib.AbstractContextManager[Path]: ...

    def exists(self, sha256: str) -> bool: ...

    def health(self) -> str: ...

    def describe(self) -> str: ...


def plaintext_chunks(handle: Readable, sha256: str, keyring: Keyring, where: str
                     ) -> Iterator[bytes]:
    """The artifact's plaintext, a chunk at a time, opening it if it is sealed."""
    head = handle.read(len(MAGIC))
    if head == MAGIC:
        source: Readable = _Prepended(head, handle)
        try:
            yield from open_chunks(keyring, source, sha256, where)
        except UnknownKey as exc:
            raise ArtifactKeyMissing(str(exc)) from None
        except SealError as exc:
            raise ArtifactUnreadable(str(exc)) from None
        return
    if head:
        yield head
    while piece := handle.read(READ_CHUNK):
        yield piece


class _Prepended(io.RawIOBase):
    """`handle` with `head` put back in front (for a stream that cannot seek)."""

    def __init__(self, head: bytes, handle: Readable) -> None:
        self._head = head
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        if self._head:
            take = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(take):]
            if size < 0:
                return take + self._handle.read()
            return take
        return self._handle.read(size)

    def readable(self) -> bool:
        return True


def corrupt_error(sha256: str, actual: str, where: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"artifact {sha256} failed its sha256 check: the stored file is corrupt ({where}: its "
        f"bytes hash to {actual}) and is not served; restore the file, or upload the same .onnx "
        "again to rewrite it")


def verified_copy(chunks: Iterable[bytes], sha256: str, sink: Writable, where: str) -> int:
    """Write `chunks` to `sink` while hashing them; raise unless they hash to `sha256`."""
    digest = hashlib.sha256()
    size = 0
    for piece in chunks:
        digest.update(piece)
        sink.write(piece)
        size += len(piece)
    if digest.hexdigest() != sha256:
        raise corrupt_error(sha256, digest.hexdigest(), where)
    return size


class PlainFile:
    """A file onnxruntime can open holding an artifact's verified plaintext (`path`): the
    stored file itself when it is plain, else an anonymous in-memory file (memfd) filled chunk
    by chunk, so that a sealed model is never written to disk in clear nor held twice by
    Python. Close it when loaded."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_plaintext(path: Path, sha256: str, keyring: Keyring) -> PlainFile:
    """Check the stored file at `path` against `sha256` and give a plaintext file of it."""
    with open(path, "rb") as handle:
        sealed = handle.read(len(MAGIC)) == MAGIC
        handle.seek(0)
        if not sealed:
            verified_copy(iter(lambda: handle.read(READ_CHUNK), b""), sha256, Discard(),
                          str(path))
            return PlainFile(path, None)
        fd = os.memfd_create(f"artifact-{sha256[:12]}", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as sink:
                verified_copy(plaintext_chunks(handle, sha256, keyring, str(path)), sha256,
                              sink, str(path))
        except BaseException:
            os.close(fd)
            raise
        return PlainFile(Path(f"/proc/self/fd/{fd}"), fd)


@contextlib.contextmanager
def plaintext_file(path: Path, sha256: str, keyring: Keyring) -> Iterator[Path]:
    opened = open_plaintext(path, sha256, keyring)
    try:
        yield opened.path
    finally:
        opened.close()


class Discard:
    """A sink for a check that only needs the hash of what passes through."""

    def write(self, data: bytes) -> int:
        return len(data)


def encoded_chunks(data: bytes, sha256: str, keyring: Keyring) -> Iterator[bytes]:
    """What a store keeps for `data`: sealed with the current key, or the bytes themselves."""
    if keyring.current is None:
        yield data
        return
    yield from seal_chunks(io.BytesIO(data), len(data), keyring.current, sha256)


def atomic_write(target: Path, chunks: Iterable[bytes], *, replace: bool, what: str,
                 variable: str, size: int) -> None:
    """Write `chunks` to a temp file next to `target`, fsync it, then give it `target`'s name:
    by link() (which refuses to replace, so a concurrent writer of the same bytes wins and we
    keep its file) or, to repair or re-seal a file, by an atomic rename over it."""
    tmp_name: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            for piece in chunks:
                handle.write(piece)
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
        log.error("cannot write %s %s under %s: %s", what, target.name, target.parent, reason)
        if exc.errno in NO_SPACE:
            raise ArtifactStoreFull(
                f"the {what} is full ({reason}): a {size}-byte artifact does not fit; nothing "
                f"was stored. Free space on the {variable} volume and send it again"
            ) from None
        raise ArtifactStoreUnwritable(
            f"the {what} cannot be written ({reason}); nothing was stored"
        ) from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)


class ArtifactStore:
    """The local store: a directory (a volume every replica mounts, or one host's disk)."""

    def __init__(self, root: Path | str, keyring: Keyring | None = None) -> None:
        self.root = Path(root)
        self.keyring = keyring or Keyring()

    def describe(self) -> str:
        return str(self.root)

    def path_for(self, sha256: str) -> Path:
        return self.root / relative_path(sha256)

    def put(self, data: bytes) -> str:
        """Store `data` atomically (temp file, fsync, link) and return its sha256.

        Raises `ArtifactStoreFull` when the disk is full and `ArtifactStoreUnwritable` on other
        write errors; either way no temp file is left and no artifact appears.
        """
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            try:
                with self.load_path(digest):  # an existing file must still be intact
                    return digest
            except ArtifactCorrupt as exc:
                # `data` hashes to the name, so it is exactly what the file should hold
                log.warning("%s; replacing it with the uploaded bytes, which match", exc)
                self._write(target, data, digest, replace=True)
                return digest
            except ArtifactKeyMissing as exc:
                # other replicas may hold that key: re-sealing here would lock them out
                raise ArtifactStoreUnwritable(f"{exc}; nothing was stored") from None
            except ArtifactUnreadable as exc:
                # altered on disk: the upload is the plaintext, so seal it anew
                log.warning("%s; sealing the uploaded bytes again", exc)
                self._write(target, data, digest, replace=True)
                return digest
        self._write(target, data, digest, replace=False)
        return digest

    def _write(self, target: Path, data: bytes, digest: str, replace: bool) -> None:
        atomic_write(target, encoded_chunks(data, digest, self.keyring), replace=replace,
                     what="model store", variable="GATEWAY_MODEL_STORE", size=len(data))

    def read(self, sha256: str) -> bytes:
        """The artifact's plaintext, after checking it still hashes to `sha256`."""
        path = self.path_for(sha256)
        try:
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    handle.seek(0)
                    data = handle.read()
                else:
                    handle.seek(0)
                    data = b"".join(plaintext_chunks(handle, sha256, self.keyring, str(path)))
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {sha256} is missing from {self.root}") from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise corrupt_error(sha256, actual, str(path))
        return data

    @contextlib.contextmanager
    def load_path(self, sha256: str) -> Iterator[Path]:
        """A verified plaintext file of the artifact, for onnxruntime to open."""
        path = self.path_for(sha256)
        if not path.exists():
            raise ArtifactMissing(f"artifact {sha256} is missing from {self.root}")
        with plaintext_file(path, sha256, self.keyring) as opened:
            yield opened

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def health(self) -> str:
        return "ok"

    def digests(self) -> Iterator[str]:
        """Every artifact's sha256, in a stable order (resumable walks go by it)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for path in sorted(base.glob("*/*.onnx")):
            name = path.stem
            if len(name) == 64:
                yield name

    def stored_key_id(self, sha256: str) -> str | None:
        """The key id the stored file is sealed with; None when it is stored plain."""
        with open(self.path_for(sha256), "rb") as handle:
            return header_key_id(handle.read(64))

    def reseal(self, sha256: str) -> None:
        """Rewrite one artifact under the current key (atomically: readers see the old or the
        new file, each complete), after checking its plaintext."""
        data = self.read(sha256)
        self._write(self.path_for(sha256), data, sha256, replace=True)

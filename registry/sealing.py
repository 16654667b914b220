"""Encryption at rest for artifacts and datasets: AES-256-GCM in chunks, so that nothing has to
hold a whole model twice (the cryptography package's AESGCM, one call per chunk).

A sealed object is a header followed by chunks:

    header  = MAGIC (8) | key id (8) | salt (16) | chunk size (4, big-endian)
    chunk i = AES-256-GCM(subkey, nonce(i, last), plaintext[i], aad=header | sha256 name)

The subkey is HKDF-SHA256(key, salt): every object has its own key, so a chunk counter is a safe
nonce. The last chunk is flagged in its nonce and is always shorter than a full chunk (empty if
need be), so a truncated or extended object fails to open instead of yielding a prefix. The
header and the plaintext's sha256 are authenticated with every chunk: an object copied under
another name, or whose key id was edited, does not open.

The key id (the first 8 bytes of a hash of the key) is in the header: it says which key an
object needs, which is how `gateway store rotate-key` finds what is still under an old key and
how a wrong key is named in the error instead of producing a wrong model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class Readable(Protocol):
    """A file, an HTTP body, anything that reads (a stream need not seek)."""

    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


MAGIC = b"MGWSEAL1"
HEADER = struct.Struct(">8s8s16sI")
TAG_BYTES = 16
CHUNK_BYTES = 1024 * 1024


class SealError(Exception):
    """An object cannot be sealed or opened with the keys at hand."""


class BadKey(SealError):
    """GATEWAY_ARTIFACT_KEY (or an old key) is not 32 bytes of base64."""


class WrongKey(SealError):
    """The object does not open with the key its header names (altered, or a false key)."""


class UnknownKey(WrongKey):
    """The object needs a key this process does not have."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"model-gateway artifact key\0" + key).digest()[:8].hex()


def parse_key(raw: str, variable: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey(f"{variable} is not base64 (make one with: "
                     "python -c 'import os,base64; print(base64.b64encode(os.urandom(32))"
                     ".decode())')") from None
    if len(key) != 32:
        raise BadKey(f"{variable} must be 32 bytes once base64-decoded, got {len(key)}")
    return key


@dataclass(frozen=True)
class Keyring:
    """The key new objects are sealed with (None: stored as they are) and the keys that may
    still open older objects while a rotation runs."""

    current: bytes | None = None
    previous: tuple[bytes, ...] = ()
    by_id: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in (*self.previous, *([self.current] if self.current else [])):
            self.by_id[key_id(key)] = key

    @classmethod
    def from_settings(cls, current: str | None, previous: str | None) -> Keyring:
        key = parse_key(current, "GATEWAY_ARTIFACT_KEY") if current else None
        old = tuple(parse_key(part, "GATEWAY_ARTIFACT_OLD_KEYS")
                    for part in (previous or "").split(",") if part.strip())
        return cls(key, old)

    @property
    def current_id(self) -> str | None:
        return key_id(self.current) if self.current else None

    def describe(self) -> str:
        known = ", ".join(sorted(self.by_id)) or "none"
        return f"GATEWAY_ARTIFACT_KEY {'id ' + self.current_id if self.current_id else 'unset'}" \
               f" (keys known: {known})"


def is_sealed(prefix: bytes) -> bool:
    return prefix[:len(MAGIC)] == MAGIC


def header_key_id(prefix: bytes) -> str | None:
    """The key id of a sealed object from its first bytes; None for a plain one."""
    if not is_sealed(prefix) or len(prefix) < HEADER.size:
        return None
    return HEADER.unpack(prefix[:HEADER.size])[1].hex()


def _subkey(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                   info=b"model-gateway artifact v1").derive(key)
    return AESGCM(derived)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def sealed_size(plain_size: int, chunk: int = CHUNK_BYTES) -> int:
    chunks = plain_size // chunk + 1  # the last chunk is always short (maybe empty)
    return HEADER.size + plain_size + chunks * TAG_BYTES


def seal_chunks(read: Readable, size: int, key: bytes, sha256: str,
                chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The sealed object for `size` plaintext bytes read from `read`, a piece at a time."""
    header = HEADER.pack(MAGIC, bytes.fromhex(key_id(key)), os.urandom(16), chunk)
    aead = _subkey(key, HEADER.unpack(header)[2])
    aad = header + sha256.encode()
    yield header
    index, left = 0, size
    while True:
        piece = read.read(min(chunk, left)) if left else b""
        if len(piece) != min(chunk, left):
            raise ValueError("the plaintext ended before its announced size")
        left -= len(piece)
        last = len(piece) < chunk
        yield aead.encrypt(_nonce(index, last), piece, aad)
        if last:
            return
        index += 1


class Opener:
    """Opens one sealed object chunk by chunk: feed it the header, then each sealed chunk."""

    def __init__(self, keyring: Keyring, header: bytes, sha256: str, where: str) -> None:
        magic, kid, salt, chunk = HEADER.unpack(header)
        self.key_id = kid.hex()
        key = keyring.by_id.get(self.key_id)
        if key is None:
            have = keyring.describe()
            raise UnknownKey(f"{where} is encrypted with key id {self.key_id}, which this gateway "
                           f"does not have ({have}); set GATEWAY_ARTIFACT_KEY (or "
                           "GATEWAY_ARTIFACT_OLD_KEYS) to the key it was written with")
        if not 1 <= chunk <= 64 * CHUNK_BYTES:
            raise WrongKey(f"{where} has a damaged header (chunk size {chunk})")
        self.chunk = chunk
        self.sealed_chunk = chunk + TAG_BYTES
        self._aead = _subkey(key, salt)
        self._aad = header + sha256.encode()
        self._where = where
        self._index = 0
        self.done = False

    def open(self, sealed: bytes) -> bytes:
        """The plaintext of the next chunk; a chunk shorter than full size is the last one."""
        if self.done:
            raise WrongKey(f"{self._where} has bytes after its last chunk: it was tampered with")
        last = len(sealed) < self.sealed_chunk
        try:
            piece = self._aead.decrypt(_nonce(self._index, last), sealed, self._aad)
        except InvalidTag:
            raise WrongKey(f"{self._where} does not decrypt with key id {self.key_id}: the "
                           "object was altered or truncated, or the key with this id is "
                           "not the one it was sealed with") from None
        self._index += 1
        self.done = last
        return piece

    def finish(self) -> None:
        if not self.done:
            raise WrongKey(f"{self._where} is truncated: its last chunk is missing")


def open_chunks(keyring: Keyring, read: Readable, sha256: str, where: str
                ) -> Iterator[bytes]:
    """The plaintext of a sealed object read from `read` (positioned at its start)."""
    opener = Opener(keyring, _read_exactly(read, HEADER.size, where), sha256, where)
    while True:
        sealed = _read_exactly(read, opener.sealed_chunk, where, allow_short=True)
        yield opener.open(sealed)
        if opener.done:
            break
    if read.read(1):
        raise WrongKey(f"{where} has bytes after its last chunk: it was tampered with")


def _read_exactly(read: Readable, size: int, where: str, allow_short: bool = False) -> bytes:
    parts, left = [], size
    while left:
        piece = read.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    data = b"".join(parts)
    if len(data) < size and not allow_short:
        raise WrongKey(f"{where} is truncated (its header is incomplete)")
    return data


class SealingReader:
    """A file-like view of `seal_chunks`, for uploads that pull (boto3's upload_fileobj)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        want = size if size is not None and size >= 0 else None
        while want is None or want > 0:
            if self._offset >= len(self._buffer):
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._buffer, self._offset = nxt, 0
            end = len(self._buffer) if want is None else min(len(self._buffer),
                                                              self._offset + want)
            piece = self._buffer[self._offset:end]
            self._offset = end
            out.append(piece)
            if want is not None:
                want -= len(piece)
        return b"".join(out)

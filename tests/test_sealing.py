"""The sealed format on its own: every way of damaging a sealed artifact is refused, and sizes on
chunk boundaries round-trip (registry.sealing through the local store)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from registry.sealing import CHUNK_BYTES, HEADER, TAG_BYTES, Keyring, key_id, sealed_size
from registry.store import (
    ArtifactCorrupt,
    ArtifactKeyMissing,
    ArtifactStore,
    ArtifactUnreadable,
    relative_path,
)

KEY, OTHER = os.urandom(32), os.urandom(32)


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1,
                                  2 * CHUNK_BYTES])
def test_sizes_on_chunk_boundaries_round_trip(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    store = ArtifactStore(tmp_path, Keyring(KEY))
    sha = store.put(data)
    stored = store.path_for(sha).read_bytes()
    assert len(stored) == sealed_size(size)
    if size >= 32:  # shorter plaintexts may appear in random bytes by chance
        assert data[:32] not in stored
    assert store.read(sha) == data
    with store.load_path(sha) as path:
        assert path.read_bytes() == data


def sealed(tmp_path: Path, size: int = 2 * CHUNK_BYTES + 100) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path, Keyring(KEY))
    return store, store.put(os.urandom(size))


def rewrite(store: ArtifactStore, sha: str, content: bytes) -> None:
    path = store.path_for(sha)
    path.chmod(0o644)
    path.write_bytes(content)


def damaged(raw: bytes, how: str) -> bytes:
    full = CHUNK_BYTES + TAG_BYTES
    if how == "flipped bit":
        return raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:]
    if how == "truncated at a chunk boundary":
        return raw[:HEADER.size + 2 * full]
    if how == "last chunk dropped":
        return raw[:HEADER.size + full]
    if how == "bytes appended":
        return raw + b"\0" * 16
    if how == "chunks swapped":
        one, two = (raw[HEADER.size + i * full:HEADER.size + (i + 1) * full] for i in (0, 1))
        return raw[:HEADER.size] + two + one + raw[HEADER.size + 2 * full:]
    if how == "salt edited":
        return raw[:20] + bytes([raw[20] ^ 1]) + raw[21:]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flipped bit", "truncated at a chunk boundary",
                                 "last chunk dropped", "bytes appended", "chunks swapped",
                                 "salt edited"])
def test_a_damaged_sealed_artifact_is_refused(tmp_path: Path, how: str) -> None:
    store, sha = sealed(tmp_path)
    rewrite(store, sha, damaged(store.path_for(sha).read_bytes(), how))
    with pytest.raises(ArtifactUnreadable, match="altered|truncated|tampered"):
        store.read(sha)
    with pytest.raises(ArtifactUnreadable), store.load_path(sha):
        pass


def test_a_sealed_object_under_another_name_does_not_open(tmp_path: Path) -> None:
    store, sha = sealed(tmp_path)
    other = store.put(os.urandom(100))
    rewrite(store, other, store.path_for(sha).read_bytes())  # the name is authenticated
    with pytest.raises(ArtifactUnreadable):
        store.read(other)


def test_an_edited_key_id_names_a_key_nobody_has(tmp_path: Path) -> None:
    store, sha = sealed(tmp_path)
    raw = bytearray(store.path_for(sha).read_bytes())
    raw[8:16] = bytes.fromhex(key_id(OTHER))
    rewrite(store, sha, bytes(raw))
    with pytest.raises(ArtifactKeyMissing, match=key_id(OTHER)):
        store.read(sha)
    both = ArtifactStore(tmp_path, Keyring(KEY, (OTHER,)))
    with pytest.raises(ArtifactUnreadable, match="does not decrypt"):
        both.read(sha)


def test_a_plain_file_from_before_the_key_still_reads_and_is_checked(tmp_path: Path) -> None:
    data = os.urandom(1000)
    sha = ArtifactStore(tmp_path).put(data)
    keyed = ArtifactStore(tmp_path, Keyring(KEY))
    assert keyed.read(sha) == data and keyed.stored_key_id(sha) is None
    rewrite(keyed, sha, data[:-1] + b"x")
    with pytest.raises(ArtifactCorrupt):
        keyed.read(sha)


def test_uploading_over_an_object_sealed_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    """A replica with a wrong key must not re-seal what the others can read."""
    data = os.urandom(1000)
    sha = ArtifactStore(tmp_path, Keyring(KEY)).put(data)
    before = (tmp_path / relative_path(sha)).read_bytes()
    with pytest.raises(Exception, match="nothing was stored"):
        ArtifactStore(tmp_path, Keyring(OTHER)).put(data)
    assert (tmp_path / relative_path(sha)).read_bytes() == before
    assert hashlib.sha256(ArtifactStore(tmp_path, Keyring(KEY)).read(sha)).hexdigest() == sha

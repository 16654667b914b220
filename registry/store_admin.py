"""Whole-store maintenance: re-encrypting under a new key and moving a store into a bucket.

Both walk the store one artifact at a time in a stable order and change each one atomically
(a rename on disk, a PUT in a bucket), so they can be stopped anywhere (Ctrl-C, a crash, the
`limit` of a run) and run again: what is already done is recognised and skipped, and at every
moment each artifact is readable, under the old key or the new one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from registry.store import ArtifactError, Store

log = logging.getLogger(__name__)


class WalkableStore(Store, Protocol):
    def digests(self) -> Iterator[str]: ...

    def stored_key_id(self, sha256: str) -> str | None: ...

    def reseal(self, sha256: str) -> None: ...


class CopyTarget(Protocol):
    def put_verified(self, sha256: str, data: bytes) -> None: ...

    def exists(self, sha256: str) -> bool: ...

    def read(self, sha256: str) -> bytes: ...


@dataclass
class Progress:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    stopped_early: bool = False


def key_census(store: WalkableStore) -> Counter[str]:
    """How many artifacts are under each key id ("plain" for those not encrypted)."""
    return Counter(store.stored_key_id(digest) or "plain" for digest in store.digests())


def rotate_key(store: WalkableStore, *, limit: int | None = None,
               report: Callable[[str, str], None] = lambda sha, what: None) -> Progress:
    """Seal every artifact not yet under the current key with it (plain ones included)."""
    current = store.keyring.current_id
    if current is None:
        raise ArtifactError("GATEWAY_ARTIFACT_KEY is not set: set it to the new key, and "
                            "GATEWAY_ARTIFACT_OLD_KEYS to the key(s) in use until now")
    return _walk(store.digests(), lambda digest: store.stored_key_id(digest) == current,
                 store.reseal, f"now under key {current}", limit, report)


def migrate(source: WalkableStore, target: CopyTarget, *, limit: int | None = None,
            report: Callable[[str, str], None] = lambda sha, what: None) -> Progress:
    """Copy every artifact of `source` into `target`, checked on both sides: the plaintext is
    verified as it is read from the source and again as it is read back from the target."""
    def copy(digest: str) -> None:
        target.put_verified(digest, source.read(digest))
        target.read(digest)  # read back through the target's own check

    return _walk(source.digests(), target.exists, copy, "copied and verified", limit, report)


def _walk(digests: Iterator[str], done: Callable[[str], bool], act: Callable[[str], None],
          what: str, limit: int | None, report: Callable[[str, str], None]) -> Progress:
    """Act on each artifact not yet done, one at a time; an artifact that fails is reported
    and left for the next run, the others go on."""
    progress = Progress()
    for digest in digests:
        if done(digest):
            progress.skipped += 1
            continue
        if limit is not None and progress.done >= limit:
            progress.stopped_early = True
            break
        try:
            act(digest)
        except ArtifactError as exc:
            progress.failed.append(f"{digest}: {exc}")
            report(digest, f"failed: {exc}")
            continue
        progress.done += 1
        report(digest, what)
    return progress

"""Artifacts in S3-compatible object storage (`GATEWAY_MODEL_STORE=s3://bucket/prefix`), shared
by every replica, each keeping a local cache (`registry.model_cache`).

Why boto3: it is the reference S3 client, reads the standard `AWS_*` variables (credentials,
`AWS_REGION`, `AWS_ENDPOINT_URL`) and config files as every other AWS tool does, streams uploads
in parts from a non-seekable reader (s3transfer) and retries throttling and 5xx answers with
backoff ("standard" retry mode). It is imported only when an `s3://` store is configured.

Objects are keyed like the local store (`<prefix>/sha256/<ab>/<sha256>.onnx`) and written once: a
key that exists is never written again (two replicas racing on the same new artifact write
equivalent objects). Nothing is held twice in memory: an upload streams (sealed chunk by chunk
when a key is set), a download streams into the cache file while the plaintext is hashed, and a
load reads the cache file. Reads of cached artifacts do not touch the bucket, so versions
already cached keep serving while object storage is down; writes then fail with
`ArtifactStoreUnavailable` (`503`), before anything is recorded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from registry.model_cache import ModelCache
from registry.sealing import Keyring, SealingReader, Writable, header_key_id
from registry.store import (
    NO_SPACE,
    READ_CHUNK,
    ArtifactCorrupt,
    ArtifactError,
    ArtifactMissing,
    ArtifactStoreFull,
    ArtifactStoreUnavailable,
    ArtifactUnreadable,
    Discard,
    PlainFile,
    atomic_write,
    encoded_chunks,
    open_plaintext,
    plaintext_chunks,
    relative_path,
    sha256_hex,
    verified_copy,
)

log = logging.getLogger(__name__)

HEALTH_TTL_S = 2.0
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix may be empty."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"GATEWAY_MODEL_STORE must look like s3://bucket/prefix, got {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class _Tee(io.RawIOBase):
    """Reads from `source`, copying every byte read to `sink` (the cache file)."""

    def __init__(self, source: Any, sink: Writable) -> None:
        self._source = source
        self._sink = sink

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._source.read(size if size >= 0 else None)
        self._sink.write(data)
        return data

    def readable(self) -> bool:
        return True


class S3Store:
    def __init__(self, url: str, cache: ModelCache, keyring: Keyring | None = None,
                 client: Any = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.cache = cache
        self.keyring = keyring or Keyring()
        self._client = client
        self._client_pid = os.getpid() if client is not None else 0
        self._lock = threading.Lock()
        self._health: tuple[float, str] = (0.0, "")
        self._health_client: Any = None
        self._health_pid = 0

    # -- the client, made after fork: gunicorn workers must not share one's connections --

    @property
    def client(self) -> Any:
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = make_client()
                    self._client_pid = os.getpid()
        return self._client

    def describe(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "")
        return f"{self.url} ({endpoint})" if endpoint else self.url

    def key_for(self, sha256: str) -> str:
        rel = relative_path(sha256)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _unavailable(self, exc: Exception, doing: str) -> ArtifactStoreUnavailable:
        reason = str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__
        return ArtifactStoreUnavailable(
            f"object storage {self.describe()} cannot be used ({doing}): {reason}")

    # -- writes --

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        if self.exists(digest):  # written once: the object already holds these bytes
            return digest
        self._upload(data, digest)
        self._write_through(data, digest)
        return digest

    def _write_through(self, data: bytes, digest: str) -> None:
        """Keep what was just uploaded in this replica's cache: it is likely served here next.
        Best effort: a full cache disk costs a download later, not the registration."""
        target = self.cache.path_for(digest)
        plain = Keyring() if self.cache.plaintext else self.keyring
        try:
            atomic_write(target, encoded_chunks(data, digest, plain), replace=True,
                         what="model cache", variable="GATEWAY_MODEL_CACHE", size=len(data))
        except ArtifactError as exc:
            log.warning("not cached after upload: %s", exc)
            return
        self.cache.evict(keep=target)

    def _upload(self, data: bytes, digest: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        body: Any = (io.BytesIO(data) if self.keyring.current is None
                     else SealingReader(encoded_chunks(data, digest, self.keyring)))
        # parts of 8 MiB, at most 4 in memory (in flight or read ahead): the upload costs
        # tens of MiB beside the model, whatever its size (bench/store_memory.py)
        config = TransferConfig(multipart_threshold=8 * 1024 * 1024,
                                multipart_chunksize=8 * 1024 * 1024, max_concurrency=4)
        config.max_in_memory_upload_chunks = 4  # s3transfer's, not among boto3's arguments
        try:
            self.client.upload_fileobj(body, self.bucket, self.key_for(digest), Config=config)
        except (BotoCoreError, ClientError, _upload_failed()) as exc:
            raise self._unavailable(exc, f"storing artifact {digest}; nothing was stored") \
                from None

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256))
            return True
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                return False
            raise self._unavailable(exc, f"looking up artifact {sha256}") from None
        except BotoCoreError as exc:
            raise self._unavailable(exc, f"looking up artifact {sha256}") from None

    # -- reads, through the cache --

    def read(self, sha256: str) -> bytes:
        with self.load_path(sha256) as path:
            return path.read_bytes()

    @contextlib.contextmanager
    def load_path(self, sha256: str) -> Iterator[Path]:
        """A verified plaintext file of the artifact: from the cache, fetched first if need be.
        A cache file that fails its check (damaged, or sealed with a key since retired) is
        dropped and fetched again; the bucket's copy is the reference."""
        path = self.cache.path_for(sha256)
        opened: PlainFile | None = None
        for attempt in (1, 2):
            if not path.exists():
                self._fill(sha256)
            try:
                opened = open_plaintext(path, sha256, self.keyring)
                break
            except FileNotFoundError:
                if attempt == 2:  # evicted twice in a row under us: the bound is too small
                    raise ArtifactMissing(f"artifact {sha256} left the cache as it was loaded; "
                                          "GATEWAY_MODEL_CACHE_BYTES is too small") from None
            except (ArtifactCorrupt, ArtifactUnreadable) as exc:
                if attempt == 2:
                    raise
                log.warning("cached %s is not usable (%s); fetching it again", sha256, exc)
                self.cache.drop(sha256)
        assert opened is not None
        self.cache.touch(path)
        try:
            yield opened.path
        finally:
            opened.close()

    def _fill(self, sha256: str) -> None:
        """Download the object into the cache, checking the plaintext's sha256 on the way."""
        from botocore.exceptions import BotoCoreError, ClientError

        target = self.cache.path_for(sha256)
        with self.cache.fill_lock(sha256):
            if target.exists():  # another process fetched it while we waited
                return
            key = self.key_for(sha256)
            tmp_name: str | None = None
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
                with os.fdopen(fd, "wb") as sink:
                    body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                    where = f"s3://{self.bucket}/{key}"
                    if self.cache.plaintext:
                        verified_copy(plaintext_chunks(body, sha256, self.keyring, where),
                                      sha256, sink, where)
                    else:
                        tee = _Tee(body, sink)
                        verified_copy(plaintext_chunks(tee, sha256, self.keyring, where),
                                      sha256, Discard(), where)
                        while tee.read(READ_CHUNK):
                            pass
                    sink.flush()
                    os.fsync(sink.fileno())
                os.replace(tmp_name, target)
                tmp_name = None
            except ClientError as exc:
                if _code(exc) in MISSING_CODES:
                    raise ArtifactMissing(f"artifact {sha256} is missing from {self.url}") \
                        from None
                raise self._unavailable(exc, f"fetching artifact {sha256}") from None
            except BotoCoreError as exc:
                raise self._unavailable(exc, f"fetching artifact {sha256}") from None
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise ArtifactStoreFull(
                        f"the model cache {self.cache.root} is full: cannot fetch {sha256}"
                    ) from None
                raise
            finally:
                if tmp_name is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp_name)
        self.cache.evict(keep=target)

    # -- health and maintenance --

    def health(self) -> str:
        """"ok" or what is wrong, asked of the bucket at most every couple of seconds."""
        from botocore.exceptions import BotoCoreError, ClientError

        at, state = self._health
        if time.monotonic() - at < HEALTH_TTL_S and state:
            return state
        try:
            if self._health_client is None or self._health_pid != os.getpid():
                self._health_client = make_client(probe=True)
                self._health_pid = os.getpid()
            self._health_client.head_bucket(Bucket=self.bucket)
            state = "ok"
        except (BotoCoreError, ClientError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            state = f"unreachable: {reason} (cached versions keep serving; registering fails)"
        self._health = (time.monotonic(), state)
        return state

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(exc, doing) from None

    def digests(self) -> Iterator[str]:
        start = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        with self._translated("listing artifacts"):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=start))
        names = sorted(item["Key"].rsplit("/", 1)[-1]
                       for page in pages for item in page.get("Contents", []))
        for name in names:
            if name.endswith(".onnx") and len(name) == 69:
                yield name[:64]

    def stored_key_id(self, sha256: str) -> str | None:
        with self._translated(f"reading the header of {sha256}"):
            head = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256),
                                          Range="bytes=0-63")["Body"].read()
        return header_key_id(head)

    def reseal(self, sha256: str) -> None:
        """Rewrite one object under the current key. A PUT replaces an object atomically, so
        readers get the old or the new one, each complete and each openable while both keys are
        known. The one exception to written-once, and it keeps the plaintext identical."""
        data = self.read(sha256)
        self._upload(data, sha256)
        self.cache.drop(sha256)

    def put_verified(self, sha256: str, data: bytes) -> None:
        """Store bytes already known to hash to `sha256` (a migration), unless present."""
        if sha256_hex(data) != sha256:
            raise ArtifactCorrupt(f"artifact {sha256} does not hash to its name; not copied")
        if not self.exists(sha256):
            self._upload(data, sha256)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _upload_failed() -> type[Exception]:
    from boto3.exceptions import S3UploadFailedError

    return S3UploadFailedError


def make_client(*, probe: bool = False) -> Any:
    """An S3 client from the standard AWS configuration, with short connect timeouts so that a
    registration against a dead endpoint answers `503` in seconds rather than hanging; the
    readiness probe's client tries once, so that a probe answers within a second or two."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 1 if probe else 3},
                    connect_timeout=1 if probe else 2, read_timeout=2 if probe else 30,
                    tcp_keepalive=True)
    return boto3.session.Session().client("s3", config=config)


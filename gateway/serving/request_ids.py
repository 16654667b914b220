"""Request ids: fresh ones from the OS's CSPRNG; caller-chosen ones claimed in Redis.

Only ids a caller supplies are claimed (one SET NX); generated ids are random 128-bit values
and skip the round trip. When Redis is unreachable the claim is allowed (availability first);
the outcome table's unique key still keeps the log itself free of duplicates.
"""

from __future__ import annotations

import os
import threading

import redis

CLAIM_SECONDS = 7 * 24 * 3600


class RequestIds:
    def __init__(self, client: redis.Redis | None, prefix: str) -> None:
        """`client` None: nothing to claim in (a command), so every id is taken as new."""
        self._client = client
        self._prefix = prefix

    def claim(self, model: str, request_id: str) -> bool:
        if self._client is None:
            return True
        try:
            return bool(self._client.set(f"{self._prefix}rid:{model}:{request_id}", b"1",
                                         nx=True, ex=CLAIM_SECONDS))
        except redis.RedisError:
            return True


class FreshIds:
    """Unguessable 128-bit ids, 256 per `os.urandom` call.

    Feedback is joined to outcomes by request id, so an id must not be predictable from the
    ids a client has seen: `random` (Mersenne Twister) is, after 624 outputs. One syscall per
    id (`uuid4`, `secrets`) cost a few percent of a request, hence the buffer. The buffer is
    dropped when the process id changes, so forked workers never hand out the same ids.
    """

    CHUNK = 16 * 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._buffer = b""
        self._at = 0

    def __call__(self) -> str:
        with self._lock:
            if self._at >= len(self._buffer) or self._pid != os.getpid():
                self._buffer, self._at, self._pid = os.urandom(self.CHUNK), 0, os.getpid()
            start = self._at
            self._at += 16
            return self._buffer[start:start + 16].hex()

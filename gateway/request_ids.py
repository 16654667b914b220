"""Caller-chosen request ids must be unique per model: claimed in Redis with an expiry.

Only ids a caller supplies are claimed (one SET NX); generated ids are random 128-bit values
and skip the round trip. When Redis is unreachable the claim is allowed (availability first);
the outcome table's unique key still keeps the log itself free of duplicates.
"""

from __future__ import annotations

import redis

CLAIM_SECONDS = 7 * 24 * 3600


class RequestIds:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def claim(self, model: str, request_id: str) -> bool:
        try:
            return bool(self._client.set(f"{self._prefix}rid:{model}:{request_id}", b"1",
                                         nx=True, ex=CLAIM_SECONDS))
        except redis.RedisError:
            return True

"""Traffic policies and how one picks a version: weighted random, sticky keys, shadow draws.

Sticky keys use weighted rendezvous hashing (HRW): for key k, every version v with weight w_v
gets the score -ln(h(model, k, v)) / w_v, with h a uniform hash in (0, 1); the lowest score wins.
Each version wins for a share of keys equal to its share of the weight, a key keeps its version
while the policy is unchanged, and a weight change only moves keys to the versions that gained
weight, never between versions that did not: going from 50/50 to 60/40 moves 10% of keys (the
minimum possible), where a cumulative-range split would do no better for two versions and much
worse for three or more.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Literal, cast

from registry.errors import InvalidInput
from registry.names import check_reason
from registry.records import PolicyRecord

MAX_WEIGHT = 1_000_000


@dataclass(frozen=True)
class TrafficPolicy:
    """An immutable policy: a request sees one of these whole, never half of a change."""

    model: str
    revision: int
    weights: tuple[tuple[int, int], ...]  # (version, weight), sorted by version
    shadow: tuple[tuple[int, float], ...]  # (version, percent)
    updated_at: str | None = None
    updated_by: str | None = None
    reason: str | None = None
    published_at: float | None = None  # when it was written to Redis (epoch seconds)

    @classmethod
    def from_dict(cls, data: PolicyRecord | dict[str, Any]) -> TrafficPolicy:
        """From a record, or from the JSON document in Redis (which adds `published_at`)."""
        published = cast(dict[str, Any], data).get("published_at")
        return cls(
            model=data["model"],
            revision=int(data["revision"]),
            weights=tuple(sorted((int(v), int(w)) for v, w in data["weights"].items())),
            shadow=tuple(sorted((int(v), float(p)) for v, p in data["shadow"].items())),
            updated_at=data.get("updated_at"),
            updated_by=data.get("updated_by"),
            reason=data.get("reason"),
            published_at=float(published) if published is not None else None,
        )

    def to_dict(self) -> PolicyRecord:
        return {
            "model": self.model,
            "revision": self.revision,
            "weights": {str(v): w for v, w in self.weights},
            "shadow": {str(v): _number(p) for v, p in self.shadow},
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "reason": self.reason,
        }

    @functools.cached_property
    def live(self) -> tuple[tuple[int, int], ...]:
        return tuple((v, w) for v, w in self.weights if w > 0)

    def versions(self) -> set[int]:
        return {v for v, _ in self.weights} | {v for v, _ in self.shadow}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _unit_hash(*parts: str) -> float:
    """A uniform number in (0, 1) from the parts; stable across processes and machines."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def choose_version(policy: TrafficPolicy, routing_key: str | None,
                   rng: random.Random | None = None) -> tuple[int, Literal["weight", "sticky"]]:
    """The version for one unpinned request and why: `sticky` with a key, else `weight`."""
    live = policy.live
    if len(live) == 1:
        return live[0][0], "sticky" if routing_key is not None else "weight"
    if routing_key is not None:
        best = min(live, key=lambda vw: -math.log(
            _unit_hash(policy.model, routing_key, str(vw[0]))) / vw[1])
        return best[0], "sticky"
    point = (rng or random).random() * sum(w for _, w in live)
    for version, weight in live:
        point -= weight
        if point < 0:
            return version, "weight"
    return live[-1][0], "weight"


def shadow_draws(policy: TrafficPolicy, rng: random.Random | None = None) -> list[int]:
    """Shadow versions that get a copy of this request, each with its percent's probability."""
    draw = (rng or random).random
    return [v for v, percent in policy.shadow if percent >= 100 or draw() * 100 < percent]


def parse_policy_body(body: dict[str, Any]) -> tuple[dict[str, int], dict[str, float],
                                                        str | None]:
    """Check the shape of a PUT body; versions are resolved and checked against the registry
    later. Returns weights and shadow keyed by the caller's version references."""
    unknown = set(body) - {"weights", "shadow", "reason", "force"}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}; send weights, shadow, reason "
                           "(and force)")
    parse_force(body)
    weights = body.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise InvalidInput('weights must be a non-empty object: {"<version>": <integer>, ...}')
    parsed_weights: dict[str, int] = {}
    for ref, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise InvalidInput(f"weight of version {ref} must be a non-negative integer, "
                               f"got {weight!r}")
        if weight < 0 or weight > MAX_WEIGHT:
            raise InvalidInput(f"weight of version {ref} must be a non-negative integer "
                               f"up to {MAX_WEIGHT}")
        parsed_weights[ref] = weight
    if sum(parsed_weights.values()) == 0:
        raise InvalidInput("all weights are zero: at least one version must take traffic")
    shadow = body.get("shadow") or {}
    if not isinstance(shadow, dict):
        raise InvalidInput('shadow must be an object: {"<version>": <percent 0-100>, ...}')
    parsed_shadow: dict[str, float] = {}
    for ref, percent in shadow.items():
        if (isinstance(percent, bool) or not isinstance(percent, int | float)
                or not math.isfinite(percent) or not 0 <= percent <= 100):
            raise InvalidInput(f"shadow percent of version {ref} must be a number from 0 to 100")
        parsed_shadow[ref] = int(percent) if float(percent).is_integer() else float(percent)
    return parsed_weights, parsed_shadow, check_reason(body.get("reason"))


def parse_force(body: dict[str, Any]) -> bool:
    """`force: true` overrides the evaluation gate; it is only accepted with a reason, because
    the override is audited and the reason is what a later reader needs."""
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false")
    reason = body.get("reason")
    if force and (not isinstance(reason, str) or not reason.strip()):
        raise InvalidInput("force overrides the evaluation gate and needs a reason (it is "
                           "audited): send a non-empty reason")
    return force

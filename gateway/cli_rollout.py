"""`gateway rollout start|status|pause|resume|abort`: progressive rollouts on outcomes."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any, add: Any) -> None:
    """Add `gateway rollout ...` to the top-level parser."""

"""`gateway models evaluate|gate|quantize`: the evaluation gate and compression commands."""

from __future__ import annotations

from typing import Any


def add_commands(models: Any, add: Any) -> None:
    """Add this module's subcommands to `gateway models`."""

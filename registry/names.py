"""The shapes of names callers may use: checked before they reach a query or a path."""

from __future__ import annotations

import re

from registry.errors import InvalidInput

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
MAX_VERSION = 2**31 - 1
MAX_REASON = 2000


def check_reason(value: object) -> str | None:
    """The `reason` a change carries into the audit trail: absent, or a bounded string."""
    if value is not None and (not isinstance(value, str) or len(value) > MAX_REASON):
        raise InvalidInput(f"reason must be a string of at most {MAX_REASON} characters")
    return value


def ascii_number(raw: str, max_digits: int) -> int | None:
    """The non-negative integer `raw` spells in ASCII digits, else None. `str.isdigit` alone
    is not enough ("²" passes it, `int` refuses it), and a long run of digits makes `int`
    slow or raise, so the length is bounded first."""
    if not raw or len(raw) > max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise InvalidInput(
            f"model name {_show(name)} must match [a-z0-9][a-z0-9_.-]{{0,63}}"
        )
    return name


def check_alias_name(name: str) -> str:
    if not isinstance(name, str) or not ALIAS_NAME.fullmatch(name) or name.isdigit():
        raise InvalidInput(
            f"alias {_show(name)} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}} "
            "and not be a plain number (numbers are versions)"
        )
    return name


def parse_version_ref(ref: str | int) -> int | str:
    """A version reference is a positive integer or an alias name."""
    if isinstance(ref, bool):
        raise InvalidInput("a version must be a positive integer or an alias")
    if isinstance(ref, int):
        number = ref
    elif isinstance(ref, str) and ascii_number(ref, len(ref)) is not None:
        number = int(ref)
    else:
        return check_alias_name(ref)
    if not 1 <= number <= MAX_VERSION:
        raise InvalidInput(f"version {number} is out of range: versions start at 1")
    return number


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

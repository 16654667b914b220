"""`GET /dashboard`: the page for people (analysts and ops). Placeholder until built."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

bp = Blueprint("dashboard", __name__)


@bp.get("/dashboard")
def dashboard() -> Any:
    return "dashboard"

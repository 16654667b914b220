"""Liveness and readiness for orchestrators: no token, no body to parse."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.app import services
from gateway.http.responses import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return json_response({"status": "ok", "pid": os.getpid()})


@bp.get("/readyz")
def readyz() -> Any:
    checks: dict[str, str] = {}
    try:
        with services().db.read() as session:
            session.execute(text("SELECT 1"))
        checks["registry"] = "ok"
    except SQLAlchemyError as exc:
        checks["registry"] = f"unreachable: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

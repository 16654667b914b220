"""Liveness and readiness for orchestrators: no token, no body to parse."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint

from gateway.web.current import services
from gateway.web.responses import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return json_response({"status": "ok", "pid": os.getpid()})


@bp.get("/readyz")
def readyz() -> Any:
    """Ready when the registry and Redis answer and, for each model, a version that traffic
    reaches is loaded in this worker (`gateway.serving.readiness`); `checks` says what is not."""
    state = services().readiness.worker()
    return json_response({"ready": state.ready, "checks": state.checks()},
                         200 if state.ready else 503)

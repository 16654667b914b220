"""`GET /metrics`: Prometheus text format, no token (scrapers sit on the private network)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from gateway.web.current import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Any:
    svc = services()
    svc.outcomes.report_gauges()
    body, content_type = svc.metrics.render()
    return Response(body, content_type=content_type)

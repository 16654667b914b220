"""`POST /feedback`: applications report ground truth (single item or a batch)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g

from gateway.web.current import services
from gateway.web.responses import json_response, read_json_object

bp = Blueprint("feedback", __name__)


@bp.post("/feedback")
def feedback() -> Any:
    svc = services()
    body = read_json_object(svc.settings.max_body_bytes)
    # an app token labels only its own requests; feedback and ops tokens (and auth off) any
    caller = g.get("caller") if g.get("role") == "app" else None
    if "items" in body and set(body) == {"items"}:
        return json_response({"items": svc.feedback.submit_batch(body["items"], caller)}, 200)
    created = svc.feedback.submit(body, caller=caller)
    return json_response({"request_id": body["request_id"], "status": "recorded" if created
                          else "unchanged"}, 202)

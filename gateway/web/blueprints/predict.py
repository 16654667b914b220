"""`POST /predict`: the gateway's own JSON inference route, for applications.

Served by `gateway.serving.entry` before Flask sees the request; this view keeps the route in
the URL map (auth rules, the OpenAPI document) and answers the same way when the app is called
without that middleware.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from gateway.serving.entry import Answer, Route

bp = Blueprint("predict", __name__)


def respond(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status, headers=answer.headers)
    if answer.deferred is not None:
        response.call_on_close(answer.deferred)
    return response


@bp.post("/predict")
def predict() -> Response:
    return respond(current_app.extensions["mgw_entry"].answer(Route(False, None, None),
                                                              request.environ))

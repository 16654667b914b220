"""`GET /openapi.json`: the OpenAPI 3 description of the public API, no token needed.

The document (`gateway.web.openapi_document`) is built once per app when the blueprint is
registered and kept in the app's extensions, not in a module global, so each app (and test) has
its own.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from flask import Blueprint, current_app
from flask.blueprints import BlueprintSetupState

from gateway.web.openapi_document import build_document
from gateway.web.responses import json_response

bp = Blueprint("openapi", __name__)
EXTENSION = "mgw_openapi"


def _release() -> str:
    try:
        return package_version("model-gateway")
    except PackageNotFoundError:
        return "0"


@bp.record_once
def _build(state: BlueprintSetupState) -> None:
    state.app.extensions[EXTENSION] = build_document(_release())


@bp.get("/openapi.json")
def openapi() -> Any:
    return json_response(current_app.extensions[EXTENSION])

"""The current app's services, for code running inside a request (blueprints, hooks)."""

from __future__ import annotations

from flask import current_app

from gateway.services import Services


def services() -> Services:
    svc: Services = current_app.extensions["mgw"]
    return svc

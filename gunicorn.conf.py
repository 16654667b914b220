"""`gunicorn wsgi:app` picks this up from the working directory; the settings live in the package."""

from gateway.web.gunicorn_conf import *  # noqa: F403

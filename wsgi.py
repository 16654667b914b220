"""The WSGI entry point: `gunicorn wsgi:app` (see gunicorn.conf.py)."""

from gateway.web.app import create_app

app = create_app()

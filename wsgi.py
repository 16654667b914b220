"""The WSGI entry point: `gunicorn wsgi:app` (see gunicorn.conf.py)."""

from gateway.app import create_app

app = create_app()

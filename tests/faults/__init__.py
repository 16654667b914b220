"""Fault tests: real processes (gunicorn, redis-server, a private PostgreSQL) broken under load."""

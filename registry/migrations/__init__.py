"""Alembic migrations for the registry schema, run by `gateway db upgrade`."""

"""Outcome log and feedback.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer, nullable=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("model_ms", sa.Float, nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("prediction", sa.JSON, nullable=True),
        sa.Column("predicted_label", sa.BigInteger, nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("inputs", sa.JSON, nullable=True),
        sa.UniqueConstraint("model", "request_id", "kind", "version", name="uq_outcome"),
    )
    op.create_index("ix_outcomes_model_ts", "outcomes", ["model", "ts"])
    op.create_index("ix_outcomes_request", "outcomes", ["request_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("label", sa.BigInteger, nullable=True),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("ts", TS, nullable=False),
        sa.UniqueConstraint("model", "request_id", name="uq_feedback"),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("outcomes")

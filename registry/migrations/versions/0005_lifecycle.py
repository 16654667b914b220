"""Model lifecycle: evaluations on datasets, per-model gates, progressive rollouts.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("models", sa.Column("gate", sa.JSON, nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_name", sa.String(256), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("reference", sa.JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_evaluations_version", "evaluations", ["model_id", "version"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("candidate", sa.Integer, nullable=False),
        sa.Column("baseline", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("previous_policy", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("step_started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("last_decision", sa.JSON, nullable=True),
    )
    op.create_index("ix_rollouts_model_state", "rollouts", ["model_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_model_state", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_evaluations_version", table_name="evaluations")
    op.drop_table("evaluations")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("gate")

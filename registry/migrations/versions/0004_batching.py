"""Per-model micro-batching settings.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("batching", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("batching")

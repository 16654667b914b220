"""The token that made each request, so that feedback is accepted only from who may give it.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outcomes", sa.Column("caller", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("caller")

"""node soak deadline: an upgrade's soak of a drained node (nodeSoakDurationInMinutes) is a deadline on the
node's row that the reconciler checks on each pass, resumed by a restarted reconciler.

Revision ID: 0021_node_soak_deadline
Revises: 0020_pool_node_settings
Create Date: 2026-12-06 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_node_soak_deadline"
down_revision = "0020_pool_node_settings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("soak_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("soaked_by_operation", sa.String(36), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch copy: dropping the old nodes table there
    # would delete rows through their ON DELETE CASCADE foreign keys.
    op.drop_column("nodes", "soaked_by_operation")
    op.drop_column("nodes", "soak_until")

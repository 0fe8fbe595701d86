"""pool drain timeout: upgradeSettings.drainTimeoutInMinutes, how long a node's cordon and drain may take
before its operation fails (None: AKS's default, 30 minutes).

Revision ID: 0013_pool_drain_timeout
Revises: 0012_node_kubelet_port
Create Date: 2026-12-06 07:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_pool_drain_timeout"
down_revision = "0012_node_kubelet_port"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pools") as batch:
        batch.add_column(sa.Column("drain_timeout_in_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch copy of agent_pools: dropping the old table
    # there would delete every node row through their ON DELETE CASCADE foreign key.
    op.drop_column("agent_pools", "drain_timeout_in_minutes")

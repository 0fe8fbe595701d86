"""node reimage reason: why the reconciler reimages a Ready node of the pool's settings (an older agent that
cannot renew its kubelet credentials); the node is outdated until its reimage.

Revision ID: 0017_node_reimage_reason
Revises: 0016_drain_completeness
Create Date: 2026-12-06 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_node_reimage_reason"
down_revision = "0016_drain_completeness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("reimage_reason", sa.String(1024), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "reimage_reason")  # ALTER TABLE ... DROP COLUMN: no batch copy of nodes

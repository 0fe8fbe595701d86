"""pool node settings: nodeLabels, nodeTaints and maxPods on pools, and on nodes the pool labels and taints
the control plane last set on their Kubernetes Node (so that an update removes the ones a pool dropped).

Revision ID: 0020_pool_node_settings
Revises: 0019_node_image_builds
Create Date: 2026-12-06 11:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_pool_node_settings"
down_revision = "0019_node_image_builds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pools") as batch:
        batch.add_column(sa.Column("node_labels", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("node_taints", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("max_pods", sa.Integer(), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("applied_node_labels", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("applied_node_taints", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not batch copies: dropping the old agent_pools or nodes
    # table there would delete rows through their ON DELETE CASCADE foreign keys.
    op.drop_column("nodes", "applied_node_taints")
    op.drop_column("nodes", "applied_node_labels")
    op.drop_column("agent_pools", "max_pods")
    op.drop_column("agent_pools", "node_taints")
    op.drop_column("agent_pools", "node_labels")

"""cluster control planes: each managed cluster's hosted Kubernetes control plane (data directory, loopback
ports, phase), recorded before its processes start.

Revision ID: 0010_cluster_control_planes
Revises: 0009_node_health
Create Date: 2026-12-06 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_cluster_control_planes"
down_revision = "0009_node_health"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_control_planes",
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.Column("data_dir", sa.String(length=1024), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("apiserver_port", sa.Integer(), nullable=False),
        sa.Column("etcd_client_port", sa.Integer(), nullable=False),
        sa.Column("etcd_peer_port", sa.Integer(), nullable=False),
        sa.Column("controller_manager_port", sa.Integer(), nullable=False),
        sa.Column("scheduler_port", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(length=4000), nullable=False),
        sa.Column("ready_seconds", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["managed_clusters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("cluster_id"),
        sa.UniqueConstraint("data_dir"),
    )


def downgrade() -> None:
    op.drop_table("cluster_control_planes")

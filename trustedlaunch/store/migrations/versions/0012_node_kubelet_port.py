"""node kubelet port: the host loopback port forwarded to a node's kubelet, recorded before its VM starts
(a restarted reconciler adopts the VM with the same port).

Revision ID: 0012_node_kubelet_port
Revises: 0011_control_plane_version
Create Date: 2026-12-06 05:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_node_kubelet_port"
down_revision = "0011_control_plane_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("kubelet_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("kubelet_port")

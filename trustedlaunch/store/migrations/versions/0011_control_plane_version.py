"""control plane version: the version a cluster's kube-apiserver answers on /version, recorded once it is
ready (the cluster's currentKubernetesVersion).

Revision ID: 0011_control_plane_version
Revises: 0010_cluster_control_planes
Create Date: 2026-12-06 04:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_control_plane_version"
down_revision = "0010_cluster_control_planes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cluster_control_planes") as batch:
        batch.add_column(sa.Column("server_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cluster_control_planes") as batch:
        batch.drop_column("server_version")

"""node image builds: each node image version keeps what it is built from (its boot chain's Debian kernel,
shim and GRUB packages and versions, the Kubernetes and runtime releases), so versions built from other
Debian signed packages are told apart and can be built again.

Revision ID: 0019_node_image_builds
Revises: 0018_resource_groups
Create Date: 2026-12-06 11:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_node_image_builds"
down_revision = "0018_resource_groups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_images") as batch:
        batch.add_column(sa.Column("build_record", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("node_images", "build_record")  # ALTER TABLE ... DROP COLUMN: no batch copy

"""resource group state: a group being deleted stays (provisioningState Deleting) until its last cluster is
deleted, as ARM keeps it.

Revision ID: 0024_resource_group_state
Revises: 0022_identity_system_data
Create Date: 2026-12-06 14:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_resource_group_state"
down_revision = "0022_identity_system_data"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_groups") as batch:
        batch.add_column(
            sa.Column("provisioning_state", sa.String(16), nullable=False, server_default="Succeeded")
        )


def downgrade() -> None:
    op.drop_column("resource_groups", "provisioning_state")

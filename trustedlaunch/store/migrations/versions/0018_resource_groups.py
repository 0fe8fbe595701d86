"""resource groups: `Microsoft.Resources/resourceGroups` that hold the managed clusters. Every resource group
an existing cluster lives in becomes one (its name as stored, the alphabetically first location of its
clusters, no tags), so nothing is lost.

Revision ID: 0018_resource_groups
Revises: 0017_node_reimage_reason
Create Date: 2026-12-06 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_resource_groups"
down_revision = "0017_node_reimage_reason"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_groups",
        sa.Column("subscription_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(90), primary_key=True),
        sa.Column("display_name", sa.String(90), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO resource_groups (subscription_id, name, display_name, location, tags, created_at) "
        "SELECT subscription_id, resource_group, resource_group, MIN(location), '{}', MIN(created_at) "
        "FROM managed_clusters GROUP BY subscription_id, resource_group"
    )


def downgrade() -> None:
    op.drop_table("resource_groups")

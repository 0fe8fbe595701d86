"""image policies: the attestation policy the reconciler derived for each node image and Secure Boot
setting, for verifying evidence against a pool by its id

Revision ID: 0004_image_policies
Revises: 0003_monitoring
Create Date: 2026-12-05 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_image_policies"
down_revision = "0003_monitoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_policies",
        sa.Column("node_image_version", sa.String(length=128), nullable=False),
        sa.Column("secure_boot", sa.Boolean(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_image_version"], ["node_images.version"]),
        sa.PrimaryKeyConstraint("node_image_version", "secure_boot"),
    )


def downgrade() -> None:
    op.drop_table("image_policies")

"""node attestation policy: the policy a node's VM was provisioned against (predicted from the image build it
booted), which its re-attestations use.

Revision ID: 0015_node_attestation_policy
Revises: 0014_debian_node_image_names
Create Date: 2026-12-06 08:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_node_attestation_policy"
down_revision = "0014_debian_node_image_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("attestation_policy", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("nodes", "attestation_policy")  # ALTER TABLE ... DROP COLUMN: no batch copy of nodes

"""attestation node time index: (pool_id, node_name, time) on attestations, so that a node's latest
attestation at a given time is one index seek (the dashboard's fleet chart asks it per node and hour).

Revision ID: 0025_attestation_node_time_index
Revises: 0024_resource_group_state
Create Date: 2026-12-06 14:50:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0025_attestation_node_time_index"
down_revision = "0024_resource_group_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attestations_node_time", "attestations", ["pool_id", "node_name", "time"])


def downgrade() -> None:
    op.drop_index("ix_attestations_node_time", table_name="attestations")

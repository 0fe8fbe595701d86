"""node host cordon: a cordoned host (`tl host cordon`, `tl host drain`) takes no new node VMs; the nodes
already placed on it stay until they are reimaged elsewhere.

Revision ID: 0028_node_host_cordon
Revises: 0027_node_handle_only
Create Date: 2026-12-06 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028_node_host_cordon"
down_revision = "0027_node_handle_only"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "node_hosts",
        sa.Column("cordoned", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch copy (see 0027)
    op.drop_column("node_hosts", "cordoned")

"""node health: the liveness checks a node failed in a row, what failed, since when the node is unhealthy, and
the auto-repairs done on it (reboot, reimage).

Revision ID: 0009_node_health
Revises: 0008_alert_lifecycle
Create Date: 2026-12-06 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_node_health"
down_revision = "0008_alert_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_checks", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("health_cause", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("unhealthy_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("repairs", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("repairs")
        batch_op.drop_column("unhealthy_since")
        batch_op.drop_column("health_cause")
        batch_op.drop_column("failed_checks")

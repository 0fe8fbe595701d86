"""alert lifecycle: an alert's type (evidence failure or unreachable node), how often it was seen, when it
was last seen and when it was acknowledged; existing alerts count once, last seen at their time.

Revision ID: 0008_alert_lifecycle
Revises: 0007_lowercase_subscriptions
Create Date: 2026-12-05 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_alert_lifecycle"
down_revision = "0007_lowercase_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "alert_type", sa.String(length=64), nullable=False, server_default="VM_AttestationFailure"
            )
        )
        batch_op.add_column(sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("count", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE alerts SET last_seen = time")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column("last_seen", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("acknowledged_at")
        batch_op.drop_column("count")
        batch_op.drop_column("last_seen")
        batch_op.drop_column("alert_type")

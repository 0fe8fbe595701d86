"""drain completeness: upgradeSettings.nodeSoakDurationInMinutes and undrainableNodeBehavior on pools, the
upgrade operation that quarantined a node it could not drain, and a Delete's ignore-pod-disruption-budget.

Revision ID: 0016_drain_completeness
Revises: 0015_node_attestation_policy
Create Date: 2026-12-06 10:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_drain_completeness"
down_revision = "0015_node_attestation_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pools") as batch:
        batch.add_column(sa.Column("node_soak_duration_in_minutes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("undrainable_node_behavior", sa.String(16), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("quarantined_by_operation", sa.String(36), nullable=True))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(
            sa.Column("ignore_pod_disruption_budget", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not batch copies: dropping the old agent_pools or nodes
    # table there would delete rows through their ON DELETE CASCADE foreign keys.
    op.drop_column("operations", "ignore_pod_disruption_budget")
    op.drop_column("nodes", "quarantined_by_operation")
    op.drop_column("agent_pools", "undrainable_node_behavior")
    op.drop_column("agent_pools", "node_soak_duration_in_minutes")

"""monitoring: attestation history with evidence, alerts and their webhook, on-demand attestation, token
scopes and a pool's max surge

Revision ID: 0003_monitoring
Revises: 0002_node_runtime
Create Date: 2026-11-23 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_monitoring"
down_revision = "0002_node_runtime"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_surge", sa.String(length=8), nullable=True))
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_attested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attestation_requested_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=256), nullable=True))
    op.create_table(
        "attestations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("secure_boot", sa.Boolean(), nullable=True),
        sa.Column("pcrs", sa.JSON(), nullable=True),
        sa.Column("nonce", sa.String(length=128), nullable=True),
        sa.Column("ak_public", sa.LargeBinary(), nullable=True),
        sa.Column("quote", sa.LargeBinary(), nullable=True),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column("event_log", sa.LargeBinary(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("token", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["pool_id"], ["agent_pools.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_attestations_pool_id", "attestations", ["pool_id"])
    op.create_index("ix_attestations_node_name", "attestations", ["node_name"])
    op.create_index("ix_attestations_time", "attestations", ["time"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("attestation_id", sa.Integer(), nullable=True),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("resource_group", sa.String(length=90), nullable=False),
        sa.Column("cluster_name", sa.String(length=63), nullable=False),
        sa.Column("pool_name", sa.String(length=12), nullable=False),
        sa.Column("node_name", sa.String(length=128), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("delivery_state", sa.String(length=16), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivery_error", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["attestation_id"], ["attestations.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_subscription_id", "alerts", ["subscription_id"])
    op.create_index("ix_alerts_node_name", "alerts", ["node_name"])
    op.create_index("ix_alerts_time", "alerts", ["time"])
    op.create_table(
        "alert_webhooks",
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id"),
    )


def downgrade() -> None:
    op.drop_table("alert_webhooks")
    op.drop_index("ix_alerts_time", table_name="alerts")
    op.drop_index("ix_alerts_node_name", table_name="alerts")
    op.drop_index("ix_alerts_subscription_id", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_attestations_time", table_name="attestations")
    op.drop_index("ix_attestations_node_name", table_name="attestations")
    op.drop_index("ix_attestations_pool_id", table_name="attestations")
    op.drop_table("attestations")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("scope")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("attestation_requested_at")
        batch_op.drop_column("last_attested_at")
    with op.batch_alter_table("agent_pools", schema=None) as batch_op:
        batch_op.drop_column("max_surge")

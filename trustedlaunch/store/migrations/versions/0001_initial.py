"""initial schema

Revision ID: 0001_initial
Revises: none
Create Date: 2026-11-23 14:49:17.828373
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "feature_registrations",
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subscription_id", "namespace", "name"),
    )
    op.create_table(
        "managed_clusters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("resource_group", sa.String(length=90), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=63), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("kubernetes_version", sa.String(length=32), nullable=False),
        sa.Column("dns_prefix", sa.String(length=54), nullable=False),
        sa.Column("fqdn", sa.String(length=255), nullable=False),
        sa.Column("ssh_public_key", sa.String(length=8192), nullable=True),
        sa.Column("virtual_nodes_enabled", sa.Boolean(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("kube_token", sa.String(length=128), nullable=False),
        sa.Column("provisioning_state", sa.String(length=32), nullable=False),
        sa.Column("power_state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscription_id", "resource_group", "name", name="uq_cluster_path"),
    )
    with op.batch_alter_table("managed_clusters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_managed_clusters_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "node_images",
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("os_type", sa.String(length=16), nullable=False),
        sa.Column("os_sku", sa.String(length=32), nullable=False),
        sa.Column("hyper_v_generation", sa.String(length=4), nullable=False),
        sa.Column("architecture", sa.String(length=8), nullable=False),
        sa.Column("trusted_launch_capable", sa.Boolean(), nullable=False),
        sa.Column("fips", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=512), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operations_resource_id"), ["resource_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_subscription_id"), ["subscription_id"], unique=False)

    op.create_table(
        "provider_registrations",
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subscription_id", "namespace"),
    )
    op.create_table(
        "agent_pools",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=12), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("vm_size", sa.String(length=64), nullable=False),
        sa.Column("os_type", sa.String(length=16), nullable=False),
        sa.Column("os_sku", sa.String(length=32), nullable=False),
        sa.Column("pool_type", sa.String(length=32), nullable=False),
        sa.Column("enable_fips", sa.Boolean(), nullable=False),
        sa.Column("orchestrator_version", sa.String(length=32), nullable=False),
        sa.Column("os_disk_type", sa.String(length=16), nullable=False),
        sa.Column("os_disk_size_gb", sa.Integer(), nullable=False),
        sa.Column("gpu_driver", sa.String(length=16), nullable=True),
        sa.Column("enable_secure_boot", sa.Boolean(), nullable=False),
        sa.Column("enable_vtpm", sa.Boolean(), nullable=False),
        sa.Column("node_image_version", sa.String(length=128), nullable=False),
        sa.Column("provisioning_state", sa.String(length=32), nullable=False),
        sa.Column("power_state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["managed_clusters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["node_image_version"],
            ["node_images.version"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cluster_id", "name", name="uq_pool_name"),
    )
    with op.batch_alter_table("agent_pools", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agent_pools_cluster_id"), ["cluster_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("node_image_version", sa.String(length=128), nullable=False),
        sa.Column("secure_boot_enabled", sa.Boolean(), nullable=False),
        sa.Column("vtpm_enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("attestation_status", sa.String(length=32), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_image_version"],
            ["node_images.version"],
        ),
        sa.ForeignKeyConstraint(["pool_id"], ["agent_pools.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("pool_id", "ordinal", name="uq_node_ordinal"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_pool_id"), ["pool_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_pool_id"))

    op.drop_table("nodes")
    with op.batch_alter_table("agent_pools", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_pools_cluster_id"))

    op.drop_table("agent_pools")
    op.drop_table("provider_registrations")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operations_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_operations_resource_id"))

    op.drop_table("operations")
    op.drop_table("node_images")
    with op.batch_alter_table("managed_clusters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_managed_clusters_subscription_id"))

    op.drop_table("managed_clusters")
    op.drop_table("feature_registrations")
    op.drop_table("api_tokens")

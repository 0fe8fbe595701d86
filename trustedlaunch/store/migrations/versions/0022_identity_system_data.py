"""identity and systemData: the installation's tenant id, each cluster's system-assigned identity (principal
id, tenant id) and kubelet identity (client and object id), who created and last changed each cluster and
pool (systemData), and agent pool tags.

Existing clusters get new random identity ids and the installation's tenant id; their creator is unknown
(systemData then has createdAt and lastModifiedAt only).

Revision ID: 0022_identity_system_data
Revises: 0021_node_soak_deadline
Create Date: 2026-12-06 14:30:00.000000
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0022_identity_system_data"
down_revision = "0021_node_soak_deadline"
branch_labels = None
depends_on = None

IDENTITIES = ("identity_principal_id", "identity_tenant_id", "kubelet_client_id", "kubelet_object_id")
WRITERS = ("created_by", "created_by_type", "last_modified_by", "last_modified_by_type")


def upgrade() -> None:
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
    )
    tenant_id = str(uuid.uuid4())
    op.bulk_insert(installation, [{"id": 1, "tenant_id": tenant_id}])
    with op.batch_alter_table("managed_clusters") as batch:
        for column in IDENTITIES:
            batch.add_column(sa.Column(column, sa.String(36), nullable=True))
    for table in ("managed_clusters", "agent_pools"):
        with op.batch_alter_table(table) as batch:
            for column in WRITERS:
                batch.add_column(sa.Column(column, sa.String(256), nullable=True))
            batch.add_column(sa.Column("last_modified_at", sa.DateTime(timezone=True), nullable=True))
        op.execute(sa.text(f"UPDATE {table} SET last_modified_at = updated_at"))  # fixed table names
    with op.batch_alter_table("agent_pools") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    connection = op.get_bind()
    clusters = sa.table(
        "managed_clusters",
        sa.column("id", sa.Integer()),
        sa.column("identity_principal_id", sa.String()),
        sa.column("identity_tenant_id", sa.String()),
        sa.column("kubelet_client_id", sa.String()),
        sa.column("kubelet_object_id", sa.String()),
    )
    for (cluster_id,) in connection.execute(sa.select(clusters.c.id)).all():
        connection.execute(
            clusters.update()
            .where(clusters.c.id == cluster_id)
            .values(
                identity_principal_id=str(uuid.uuid4()),
                identity_tenant_id=tenant_id,
                kubelet_client_id=str(uuid.uuid4()),
                kubelet_object_id=str(uuid.uuid4()),
            )
        )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not batch copies: dropping the old agent_pools table
    # there would delete nodes through their ON DELETE CASCADE foreign keys.
    op.drop_column("agent_pools", "tags")
    for table in ("agent_pools", "managed_clusters"):
        op.drop_column(table, "last_modified_at")
        for column in reversed(WRITERS):
            op.drop_column(table, column)
    for column in reversed(IDENTITIES):
        op.drop_column("managed_clusters", column)
    op.drop_table("installation")

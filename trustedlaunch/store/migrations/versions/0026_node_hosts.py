"""node hosts: hypervisor hosts that run node VMs through libvirt, and on each node the driver that runs its
VM, its host and the driver's handle (the direct driver's handle is QEMU's pid, copied from qemu_pid).

Revision ID: 0026_node_hosts
Revises: 0025_attestation_node_time_index
Create Date: 2026-12-06 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_node_hosts"
down_revision = "0025_attestation_node_time_index"
branch_labels = None
depends_on = None
HOST_FOREIGN_KEY = "nodes_host_id_fkey"


def upgrade() -> None:
    op.create_table(
        "node_hosts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("uri", sa.String(512), nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ek_ca_certificate", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False, server_default="Ready"),
        sa.Column("state_cause", sa.String(1024), nullable=True),
        sa.Column("failed_checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Plain ADD COLUMNs (no batch copy: dropping the old nodes table on SQLite would cascade-delete rows);
    # SQLite takes the foreign key only inside ADD COLUMN, other databases as a constraint of its own.
    op.add_column("nodes", sa.Column("driver", sa.String(16), nullable=False, server_default="qemu"))
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE nodes ADD COLUMN host_id INTEGER REFERENCES node_hosts (id)")
    else:
        op.add_column("nodes", sa.Column("host_id", sa.Integer, nullable=True))
        op.create_foreign_key(HOST_FOREIGN_KEY, "nodes", "node_hosts", ["host_id"], ["id"])
    op.add_column("nodes", sa.Column("handle", sa.String(64), nullable=True))
    op.create_index("ix_nodes_host_id", "nodes", ["host_id"])
    op.execute("UPDATE nodes SET handle = CAST(qemu_pid AS VARCHAR(64)) WHERE qemu_pid IS NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(HOST_FOREIGN_KEY, "nodes", type_="foreignkey")
    op.drop_index("ix_nodes_host_id", table_name="nodes")
    op.drop_column("nodes", "handle")
    op.drop_column("nodes", "host_id")
    op.drop_column("nodes", "driver")
    op.drop_table("node_hosts")

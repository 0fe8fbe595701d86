"""node runtime: the VM run directory, qemu/swtpm pids, attestation state and status message of a node

Revision ID: 0002_node_runtime
Revises: 0001_initial
Create Date: 2026-11-23 15:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_node_runtime"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_dir", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("qemu_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("swtpm_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("attestation_state", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("message", sa.String(length=4096), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("message")
        batch_op.drop_column("attestation_state")
        batch_op.drop_column("swtpm_pid")
        batch_op.drop_column("qemu_pid")
        batch_op.drop_column("run_dir")

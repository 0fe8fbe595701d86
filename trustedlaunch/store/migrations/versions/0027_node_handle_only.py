"""node handle only: the reconciler finds a node's VM again by its driver's handle (0026), so the direct
driver's qemu_pid and swtpm_pid columns go (their value is in `handle` first).

Revision ID: 0027_node_handle_only
Revises: 0026_node_hosts
Create Date: 2026-12-06 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_node_handle_only"
down_revision = "0026_node_hosts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE nodes SET handle = CAST(qemu_pid AS VARCHAR(64)) "
        "WHERE handle IS NULL AND qemu_pid IS NOT NULL AND driver = 'qemu'"
    )
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), not a batch copy: dropping the old nodes table there
    # would delete rows through their ON DELETE CASCADE foreign keys.
    op.drop_column("nodes", "swtpm_pid")
    op.drop_column("nodes", "qemu_pid")


def downgrade() -> None:
    op.add_column("nodes", sa.Column("qemu_pid", sa.Integer(), nullable=True))
    op.add_column("nodes", sa.Column("swtpm_pid", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE nodes SET qemu_pid = CAST(handle AS INTEGER) WHERE driver = 'qemu' AND handle IS NOT NULL"
    )

"""enrolled AKs: the name of the AK the platform enrolled for each node, indexed, so that the verifier API
issues tokens only for evidence of a TPM the platform knows (filled from the nodes' attestation state)

Revision ID: 0005_enrolled_aks
Revises: 0004_image_policies
Create Date: 2026-12-05 22:00:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005_enrolled_aks"
down_revision = "0004_image_policies"
branch_labels = None
depends_on = None

_NODES = sa.table(
    "nodes",
    sa.column("id", sa.Integer()),
    sa.column("attestation_state", sa.JSON()),
    sa.column("enrolled_ak_name", sa.String(length=132)),
)


def _ak_name(state: object) -> str | None:
    """The hex AK name of a stored NodeState document, None when it has none (or is unreadable)."""
    if isinstance(state, str):
        try:
            state = json.loads(state)
        except ValueError:
            return None
    name = state.get("akName") if isinstance(state, dict) else None
    return name.lower() if isinstance(name, str) and name else None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enrolled_ak_name", sa.String(length=132), nullable=True))
        batch_op.create_index(batch_op.f("ix_nodes_enrolled_ak_name"), ["enrolled_ak_name"], unique=False)
    connection = op.get_bind()
    rows = connection.execute(sa.select(_NODES.c.id, _NODES.c.attestation_state)).all()
    for node_id, state in rows:
        name = _ak_name(state)
        if name is not None:
            connection.execute(_NODES.update().where(_NODES.c.id == node_id).values(enrolled_ak_name=name))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_enrolled_ak_name"))
        batch_op.drop_column("enrolled_ak_name")

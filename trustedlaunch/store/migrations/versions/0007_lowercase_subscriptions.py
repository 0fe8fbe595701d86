"""lowercase subscription ids: ARM compares ids case-insensitively, and the control plane now stores every
subscription id lowercase (also inside the resource ids of operations). A row whose lowercase twin exists
already (the same subscription written in two cases), or that another spelling of its key precedes, keeps
its case and is no longer reachable.

Revision ID: 0007_lowercase_subscriptions
Revises: 0006_ui_sessions
Create Date: 2026-12-05 22:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007_lowercase_subscriptions"
down_revision = "0006_ui_sessions"
branch_labels = None
depends_on = None

# table -> the other columns of its unique key (None: subscription_id is not part of a unique key)
TABLES: dict[str, tuple[str, ...] | None] = {
    "managed_clusters": ("resource_group", "name"),
    "feature_registrations": ("namespace", "name"),
    "provider_registrations": ("namespace",),
    "alert_webhooks": (),
    "operations": None,
    "alerts": None,
}
SUBSCRIPTION_PREFIX = len("/subscriptions/00000000-0000-0000-0000-000000000000")


def upgrade() -> None:
    for table, key in TABLES.items():
        condition = "subscription_id <> lower(subscription_id)"
        if key is not None:
            same_key = "".join(f" AND twin.{column} = {table}.{column}" for column in key)
            # no lowercase twin yet, and of several spellings only the first (in byte order) is lowercased
            condition += (
                f" AND NOT EXISTS (SELECT 1 FROM {table} AS twin"
                f" WHERE twin.subscription_id = lower({table}.subscription_id){same_key})"
                f" AND NOT EXISTS (SELECT 1 FROM {table} AS twin"
                f" WHERE lower(twin.subscription_id) = lower({table}.subscription_id){same_key}"
                f" AND twin.subscription_id < {table}.subscription_id)"
            )
        op.execute(f"UPDATE {table} SET subscription_id = lower(subscription_id) WHERE {condition}")
    op.execute(
        "UPDATE operations SET resource_id = '/subscriptions/' || lower(substr(resource_id, 16, 36)) || "
        f"substr(resource_id, {SUBSCRIPTION_PREFIX + 1}) "
        "WHERE resource_id LIKE '/subscriptions/%' "
        "AND substr(resource_id, 16, 36) <> lower(substr(resource_id, 16, 36))"
    )


def downgrade() -> None:
    """Nothing to undo: lowercase ids are valid in the previous schema."""

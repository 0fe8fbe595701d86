"""What a fully migrated store holds, for the migration tests on SQLite (tests/control) and PostgreSQL
(tests/store)."""

from __future__ import annotations

TABLES = {
    "managed_clusters",
    "agent_pools",
    "nodes",
    "node_hosts",
    "node_images",
    "operations",
    "feature_registrations",
    "attestations",
    "image_policies",
    "alerts",
    "alert_webhooks",
    "provider_registrations",
    "api_tokens",
    "ui_sessions",
    "cluster_control_planes",
    "resource_groups",
    "installation",
    "alembic_version",
}
HEAD_REVISION = "0028_node_host_cordon"

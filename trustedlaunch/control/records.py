"""The store's rows and session types as the front ends (api, web) name them: they reach the store only
through control, so they import these names from here, never from trustedlaunch.store."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.store.models import (
    AgentPool,
    AlertRecord,
    AlertWebhook,
    ApiToken,
    AttestationRecord,
    FeatureRegistration,
    ManagedCluster,
    Node,
    NodeHost,
    Operation,
    ProviderRegistration,
    ResourceGroup,
)

Sessions = sessionmaker[Session]  # what `app.state.sessions` holds: one store session per call

__all__ = [
    "AgentPool",
    "AlertRecord",
    "AlertWebhook",
    "ApiToken",
    "AttestationRecord",
    "FeatureRegistration",
    "ManagedCluster",
    "Node",
    "NodeHost",
    "Operation",
    "ProviderRegistration",
    "ResourceGroup",
    "Session",
    "Sessions",
]

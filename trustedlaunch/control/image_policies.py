"""The attestation policy of each node image version, kept in the store per Secure Boot setting: predicted
from its image when a version is built (control.node_image_versions) or derived by the reconciler when a
node first boots it; a pool's nodes are verified against the one of the pool's version
(control.pool_policies)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from trustedlaunch.attest.policy import Policy
from trustedlaunch.store.models import ImagePolicy, utc_now


def record_image_policy(session: Session, node_image_version: str, secure_boot: bool, policy: Policy) -> None:
    """Keep `policy` as the one of `node_image_version` booted with `secure_boot` (written on change)."""
    document = policy.to_json()
    row = session.get(ImagePolicy, (node_image_version, secure_boot))
    if row is None:
        session.add(
            ImagePolicy(node_image_version=node_image_version, secure_boot=secure_boot, policy=document)
        )
    elif row.policy != document:
        row.policy, row.updated_at = document, utc_now()

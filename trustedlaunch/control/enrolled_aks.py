"""The attestation keys the platform enrolled: the verifier API vouches only for them.

A node's AK is enrolled when the reconciler first attests it (EK certificate chained to the platform EK CA,
then TPM2_ActivateCredential, trustedlaunch.attest.remote.enroll) and kept on the node row
(`Node.enrolled_ak_name`) until the node is reimaged (a new vTPM) or deleted. Evidence signed by any other
key, even when it verifies against a policy, proves nothing the platform can vouch for: it gets no
attestation token, and naming a pool (`poolId`) it fails.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.attest.findings import Check, Finding
from trustedlaunch.store.models import Node

ENROLLMENT = "by EK certificate from the platform EK CA and credential activation"


def enrolled_node(session: Session, ak_name: bytes, pool_id: int | None = None) -> Node | None:
    """The current node whose enrolled AK has the TPM name `ak_name` (in agent pool `pool_id` when given);
    None when the platform enrolled no such AK."""
    query = select(Node).where(Node.enrolled_ak_name == ak_name.hex())
    if pool_id is not None:
        query = query.where(Node.pool_id == pool_id)
    return session.scalars(query.order_by(Node.id).limit(1)).first()


def not_in_pool_finding(ak_name: bytes, pool_name: str) -> Finding:
    """The verdict on evidence whose AK is not enrolled for a current node of the pool the caller named."""
    return Finding(
        Check.AK_NOT_ENROLLED,
        "AK",
        f"the quote's AK (name {ak_name.hex()}) is not one the platform enrolled ({ENROLLMENT}) for a "
        f"current node of agent pool '{pool_name}': the evidence does not come from one of the pool's nodes",
    )


def token_withheld_reason(ak_name: bytes | None) -> str:
    """Why a passing verification of evidence by an AK the platform did not enroll gets no token."""
    key = "the quote's AK" if ak_name is None else f"the quote's AK (name {ak_name.hex()})"
    return (
        f"no attestation token: {key} is not one the platform enrolled ({ENROLLMENT}) for a current node; "
        "a token vouches only for a TPM the platform knows"
    )

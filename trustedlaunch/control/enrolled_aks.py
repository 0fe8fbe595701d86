"""The attestation keys the platform enrolled: the verifier API vouches only for them.

A node's AK is enrolled when the reconciler first attests it (EK certificate chained to the platform EK CA,
then TPM2_ActivateCredential, trustedlaunch.attest.remote.enroll) and kept on the node row
(`Node.enrolled_ak_name`) until the node is reimaged (a new vTPM) or deleted. Evidence signed by any other
key, even when it verifies against a policy, proves nothing the platform can vouch for: it gets no
attestation token, and naming a pool (`poolId`) it fails.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.models import Node

ENROLLMENT = "by EK certificate from the platform EK CA and credential activation"
# Built once (a verify call runs one of them): half the cost of building the statement on every call.
_BY_AK = (
    select(Node.name, Node.node_image_version)
    .where(Node.enrolled_ak_name == bindparam("ak_name"))
    .order_by(Node.id)
    .limit(1)
)
_BY_AK_IN_POOL = _BY_AK.where(Node.pool_id == bindparam("pool_id"))


class EnrolledNode(NamedTuple):
    """The node an enrolled AK belongs to: what a token names."""

    name: str
    node_image_version: str


def enrolled_node(session: Session, ak_name: bytes, pool_id: int | None = None) -> EnrolledNode | None:
    """The current node whose enrolled AK has the TPM name `ak_name` (in agent pool `pool_id` when given);
    None when the platform enrolled no such AK. One indexed read of two columns (on every verify call)."""
    if pool_id is None:
        row = session.execute(_BY_AK, {"ak_name": ak_name.hex()}).first()
    else:
        row = session.execute(_BY_AK_IN_POOL, {"ak_name": ak_name.hex(), "pool_id": pool_id}).first()
    return None if row is None else EnrolledNode(row.name, row.node_image_version)


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

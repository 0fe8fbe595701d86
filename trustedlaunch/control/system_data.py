"""Who created and last changed a managed cluster or an agent pool (ARM's `systemData`), and the tenant id
of the installation's identities.

The caller is the principal the API authenticated: an API token, named by its name (`tl token list`; the
bootstrap token is `bootstrap-admin`). ARM's createdByType for it is `Application`: a token is the
credential of a client, as a service principal's is, not a signed-in person. Only writes through the API
change systemData; the reconciler's progress does not (ARM's lastModifiedAt is the last client change).

Tenant id: `TL_TENANT_ID` (a GUID) in the environment of `tl serve` and the embedded server, else the
installation's own id, made once when the store is created (migration 0022, the `installation` row). A
cluster keeps the tenant id it was created with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import select

from trustedlaunch.control.limits import SUBSCRIPTION_ID
from trustedlaunch.control.records import Session
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.models import AgentPool, Installation, ManagedCluster, new_uuid, utc_now

TENANT_ENV = "TL_TENANT_ID"
TOKEN_CALLER_TYPE = "Application"


@dataclass(frozen=True)
class Caller:
    """The authenticated client of a write: `name` and ARM's `type` (User, Application, ...)."""

    name: str
    type: str


def token_caller(token_name: str) -> Caller:
    """The caller the API token called `token_name` stands for."""
    return Caller(token_name, TOKEN_CALLER_TYPE)


def tenant_from_environment() -> str | None:
    """TL_TENANT_ID, lowercase, or None when unset; a value that is not a GUID fails (the server's start)."""
    raw = os.environ.get(TENANT_ENV, "").strip()
    if not raw:
        return None
    if not SUBSCRIPTION_ID.match(raw):
        raise TrustedLaunchError(f"{TENANT_ENV}: '{raw[:64]}' is not a GUID (e.g. {new_uuid()})")
    return raw.lower()


def tenant_id(session: Session) -> str:
    """The tenant id new identities get: TL_TENANT_ID, else the installation's (migration 0022 makes its
    row); TrustedLaunchError when the store has no installation row (a store that is not migrated, or
    whose row was removed: no tenant id is made up)."""
    configured = tenant_from_environment()
    if configured is not None:
        return configured
    installation = session.scalar(select(Installation).where(Installation.id == 1))
    if installation is None:
        raise TrustedLaunchError(
            "the store has no installation row (its tenant id), which migration 0022_identity_system_data "
            "makes: set TL_TENANT_ID or migrate the store (tl serve does)"
        )
    return installation.tenant_id


def record_write(resource: ManagedCluster | AgentPool, caller: Caller, created: bool) -> None:
    """Stamp a write by `caller` on `resource`'s systemData (`created`: it is new)."""
    now = utc_now()
    if created:
        resource.created_by, resource.created_by_type = caller.name, caller.type
        resource.created_at = now
    resource.last_modified_by, resource.last_modified_by_type = caller.name, caller.type
    resource.last_modified_at = now

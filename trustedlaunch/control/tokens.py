"""API bearer tokens and what they may do.

Tokens are stored as SHA-256 digests; a bootstrap admin token is written to a 0600 file. A token's scope
(`ApiToken.scope`, lowercase) is None for an admin token (every path), `/subscriptions/{id}`,
`/subscriptions/{id}/resourcegroups/{name}` or the verifier API (ATTESTATION_API_PATH: a token for node
agents and relying parties that can do nothing else). A scoped token may use only paths inside its scope,
plus the long-running operation URLs of resources inside it; everything else (subscription-wide lists,
features and providers for a resource-group token; token management and /metrics for every scoped token) is
refused with 403 `AuthorizationFailed`, worded like ARM's. Every valid token may use the verifier API (it
reads and changes no resource).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError, bad_request, conflict, not_found
from trustedlaunch.control.resource_id import ResourceId, path_within
from trustedlaunch.control.resources import PROVIDER, RESOURCE_GROUP, SUBSCRIPTION_ID
from trustedlaunch.store.models import ApiToken, Operation

BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
TOKEN_PREFIX = "tl_"
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9._]{0,63}$")
ATTESTATION_API_PATH = "/providers/Microsoft.TrustedLaunch/attestation"  # challenge + verify
SCOPE_FORMS = (
    "/subscriptions/{subscriptionId}, /subscriptions/{subscriptionId}/resourceGroups/{name} or "
    + ATTESTATION_API_PATH
)
# ARM action verb of each HTTP method; POST is an action named by the path's last segment.
METHOD_VERBS = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}
OPERATION_TYPES = (("locations", "operations"), ("locations", "operationresults"))  # the two operation URLs


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to: its name and its scope (None = admin)."""

    name: str
    scope: str | None

    @property
    def is_admin(self) -> bool:
        """Whether the token may use every path."""
        return self.scope is None

    def covers(self, path: str) -> bool:
        """Whether the ARM path or resource id `path` (any case) lies inside this principal's scope."""
        if self.scope is None:
            return True
        return path_within(path, self.scope) or path_within(path, _ATTESTATION_SCOPE)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_ATTESTATION_SCOPE = ATTESTATION_API_PATH.lower()


def normalize_scope(scope: str | None) -> str | None:
    """The stored (lowercase) form of a token scope; None or "" or "/" = admin. Bad scopes are 400 errors."""
    if scope is None or scope.strip() in ("", "/"):
        return None
    if scope.strip().rstrip("/").lower() == _ATTESTATION_SCOPE:
        return _ATTESTATION_SCOPE
    scope_id = ResourceId.parse(scope.strip().rstrip("/"))
    if (
        scope_id is None
        or scope_id.namespace is not None
        or SUBSCRIPTION_ID.match(scope_id.subscription_id) is None
        or (scope_id.resource_group is not None and RESOURCE_GROUP.match(scope_id.resource_group) is None)
    ):
        raise bad_request(
            "InvalidTokenScope",
            f"Token scope '{scope}' is not valid: use {SCOPE_FORMS} (omit the scope for an admin token).",
            "scope",
        )
    return scope_id.canonical


def create_token(session: Session, name: str, scope: str | None = None) -> str:
    """Create a token called `name` acting on `scope` (None = admin); return its plaintext (the only time it
    is available). Bad names and scopes are 400 errors, an existing name a 409."""
    if not TOKEN_NAME.match(name):
        raise bad_request(
            "InvalidTokenName",
            f"Token name '{name}' is not valid: 1-64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit.",
            "name",
        )
    stored_scope = normalize_scope(scope)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise conflict("TokenExists", f"A token named '{name}' exists already; revoke it first.", "name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_sha256=_digest(token), scope=stored_scope))
    session.flush()
    return token


def _principal_for_digest(session: Session, digest: str) -> Principal | None:
    row = session.execute(
        select(ApiToken.name, ApiToken.scope, ApiToken.token_sha256).where(ApiToken.token_sha256 == digest)
    ).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return Principal(row.name, row.scope)


def principal_for(session: Session, token: str) -> Principal | None:
    """The principal of `token`, or None if no stored token matches it."""
    return _principal_for_digest(session, _digest(token))


def token_is_valid(session: Session, token: str) -> bool:
    """Whether `token` matches a stored digest."""
    return principal_for(session, token) is not None


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token (digests only), by name."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def get_token(session: Session, name: str) -> ApiToken:
    """The token called `name`, or a 404 error."""
    token = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise not_found("TokenNotFound", f"Token '{name}' does not exist (tl token list shows them).", "name")
    return token


def revoke_token(session: Session, name: str) -> None:
    """Delete the token called `name` (404 error if there is none): it stops authenticating at once in this
    process and within PrincipalCache's ttl in other server processes."""
    session.delete(get_token(session, name))


def ensure_bootstrap_token(session: Session, token_file: Path) -> None:
    """Make sure `token_file` holds a valid admin token; (re)create it if missing or stale. Mode 0600."""
    if token_file.is_file():
        principal = principal_for(session, token_file.read_text().strip())
        if principal is not None and principal.is_admin:
            return
    session.execute(delete(ApiToken).where(ApiToken.name == BOOTSTRAP_TOKEN_NAME))
    token = create_token(session, BOOTSTRAP_TOKEN_NAME)
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = token_file.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, token_file)


def required_action(method: str, path: str) -> str:
    """The ARM action a request performs, e.g. `Microsoft.ContainerService/managedClusters/write` for a PUT of
    a cluster, `Microsoft.Features/providers/features/register/action` for a POST of .../register."""
    segments = [segment for segment in path.split("/") if segment]
    lowered = [segment.lower() for segment in segments]
    if "providers" in lowered and lowered.index("providers") + 1 < len(segments):
        start = lowered.index("providers")
        namespace, rest = segments[start + 1], segments[start + 2 :]
    elif lowered[:1] == ["subscriptions"]:
        namespace, rest = "Microsoft.Resources", segments
    else:
        namespace, rest = "Microsoft.TrustedLaunch", segments
    verb = METHOD_VERBS.get(method.upper(), "action")
    return "/".join([namespace, *rest[0::2], verb])


def authorization_failed(principal: Principal, method: str, path: str) -> ArmError:
    """ARM's 403 for a request outside the principal's scope."""
    return ArmError(
        403,
        "AuthorizationFailed",
        f"The client '{principal.name}' does not have authorization to perform action "
        f"'{required_action(method, path)}' over scope '{path}' or the scope is invalid. If access was "
        "recently granted, please refresh your credentials.",
    )


def authorize(session: Session, principal: Principal, method: str, path: str) -> None:
    """Raise 403 AuthorizationFailed unless `principal` may send `method` to `path`. An operation URL is
    allowed when the operation's resource lies inside the principal's scope."""
    if principal.covers(path):
        return
    target = ResourceId.parse(path)
    if target is not None and target.resource_group is None:
        names = next(filter(None, (target.names(PROVIDER, *types) for types in OPERATION_TYPES)), None)
        operation = None if names is None else session.get(Operation, names[1])
        if (
            operation is not None
            and ResourceId(operation.subscription_id) == ResourceId(target.subscription_id)
            and principal.covers(operation.resource_id)
        ):
            return
    raise authorization_failed(principal, method, path)


def authorize_pool_reference(principal: Principal, pool_id: str) -> None:
    """Raise 403 AuthorizationFailed unless `principal` may name the agent pool `pool_id` in a verify request:
    tokens scoped to the verifier API (node agents, relying parties) may name any pool, others the pools
    inside their scope."""
    if principal.scope == _ATTESTATION_SCOPE or principal.covers(pool_id):
        return
    raise authorization_failed(principal, "GET", pool_id)


class PrincipalCache:
    """The principals of recently used tokens, each remembered for `ttl` seconds to spare a database read per
    request: a token revoked by another process keeps working here for at most `ttl` seconds; `forget`
    ends a name's entries at once (revocation through this process)."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float, max_entries: int = 1024) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: dict[str, tuple[float, Principal]] = {}

    def resolve(self, token: str) -> Principal | None:
        """The principal of `token` (None if it is not valid)."""
        digest = _digest(token)
        now = time.monotonic()
        cached = self.entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.sessions() as session:
            principal = _principal_for_digest(session, digest)
        if principal is None:
            self.entries.pop(digest, None)
            return None
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[digest] = (now + self.ttl, principal)
        return principal

    def forget(self, name: str) -> None:
        """Drop the cached principal of the token called `name`."""
        for digest, (_until, principal) in list(self.entries.items()):
            if principal.name == name:
                del self.entries[digest]

    def authorize(self, token: str, method: str, path: str) -> Principal | None:
        """The principal of `token` once it may send `method` to `path` (403 ArmError otherwise); None if the
        token is not valid."""
        principal = self.resolve(token)
        if principal is None or principal.covers(path):
            return principal
        with self.sessions() as session:
            authorize(session, principal, method, path)
        return principal

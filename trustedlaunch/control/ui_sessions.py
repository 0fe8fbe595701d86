"""Dashboard sign-ins: server-side sessions, so the browser never holds an API token.

Signing in with an API token opens a session: a random id the browser keeps in its cookie, stored here only
as its SHA-256 with the token it was opened with and when it expires (SESSION_SECONDS). Every API worker
process reads the same rows; signing out deletes the row, so the old cookie stops working at once, and
revoking the token ends its sessions (the foreign key cascades). Only tokens that may read resources sign
in: admin, subscription and resource-group tokens, not those of the verifier API (node agents and relying
parties). A token has at most MAX_SESSIONS_PER_TOKEN sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from trustedlaunch.control.tokens import ATTESTATION_API_PATH, Principal, get_token, principal_for
from trustedlaunch.store.models import ApiToken, UiSession, utc_now

SESSION_SECONDS = 8 * 3600
MAX_SESSION_ID_LENGTH = 128
MAX_SESSIONS_PER_TOKEN = 50  # a token's oldest sessions end when it opens more


class SignInRefusal(Enum):
    """Why a token cannot open a dashboard session."""

    INVALID_TOKEN = "That API token is not valid for this server."
    NOT_FOR_DASHBOARD = (
        "That token is for the verifier API only; sign in with an admin, subscription or resource-group "
        "token."
    )


def may_sign_in(principal: Principal) -> bool:
    """Whether a token's principal may use the dashboard (every scope but the verifier API's)."""
    return principal.scope != ATTESTATION_API_PATH.lower()


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def open_session(session: Session, token: str, now: datetime | None = None) -> str | SignInRefusal:
    """A new session id for `token` (valid for SESSION_SECONDS; the token's oldest sessions beyond
    MAX_SESSIONS_PER_TOKEN end), or why the token may not sign in."""
    principal = principal_for(session, token)
    if principal is None:
        return SignInRefusal.INVALID_TOKEN
    if not may_sign_in(principal):
        return SignInRefusal.NOT_FOR_DASHBOARD
    now = now or utc_now()
    token_id = get_token(session, principal.name).id
    oldest = (
        select(UiSession.id_sha256)
        .where(UiSession.token_id == token_id)
        .order_by(UiSession.created_at.desc())
        .offset(MAX_SESSIONS_PER_TOKEN - 1)
    )
    session.execute(delete(UiSession).where(UiSession.id_sha256.in_(oldest)))
    session_id = secrets.token_urlsafe(32)
    session.add(
        UiSession(
            id_sha256=_digest(session_id),
            token_id=token_id,
            created_at=now,
            expires_at=now + timedelta(seconds=SESSION_SECONDS),
        )
    )
    return session_id


def session_principal(session: Session, session_id: str, now: datetime | None = None) -> Principal | None:
    """The principal of an open, unexpired session (None for an unknown, ended or expired one)."""
    if not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
        return None
    row = session.execute(
        select(ApiToken.name, ApiToken.scope)
        .join(UiSession, UiSession.token_id == ApiToken.id)
        .where(UiSession.id_sha256 == _digest(session_id), UiSession.expires_at > (now or utc_now()))
    ).first()
    if row is None:
        return None
    principal = Principal(row.name, row.scope)
    return principal if may_sign_in(principal) else None


def close_session(session: Session, session_id: str) -> None:
    """End a session (sign-out): its id no longer signs anything in."""
    session.execute(delete(UiSession).where(UiSession.id_sha256 == _digest(session_id)))


def delete_expired_sessions(session: Session, now: datetime | None = None) -> int:
    """Delete the sessions that have expired; how many."""
    outcome = session.execute(delete(UiSession).where(UiSession.expires_at <= (now or utc_now())))
    return int(getattr(outcome, "rowcount", 0) or 0)

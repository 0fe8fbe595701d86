"""Dashboard sessions (control/ui_sessions.py) on a real store, SQLite and PostgreSQL: who may sign in,
expiry, sign-out, revocation and the bound on a token's sessions."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.tokens import ATTESTATION_API_PATH, create_token, revoke_token
from trustedlaunch.control.ui_sessions import (
    MAX_SESSIONS_PER_TOKEN,
    SESSION_SECONDS,
    SignInRefusal,
    close_session,
    open_session,
    session_principal,
)
from trustedlaunch.store.models import UiSession, utc_now

SUB = "/subscriptions/11111111-2222-3333-4444-555555555555"


def opened(session: Session, token: str, now: datetime | None = None) -> str:
    session_id = open_session(session, token, now)
    assert isinstance(session_id, str), session_id
    return session_id


def test_who_signs_in_and_for_how_long(store: sessionmaker[Session]) -> None:
    now = utc_now()
    with store.begin() as session:
        operator = create_token(session, "operator", SUB)
        verifier = create_token(session, "relying-party", ATTESTATION_API_PATH)
        assert open_session(session, "tl_not-a-token") is SignInRefusal.INVALID_TOKEN
        assert open_session(session, verifier) is SignInRefusal.NOT_FOR_DASHBOARD
        session_id = opened(session, operator, now)
    with store() as session:
        principal = session_principal(session, session_id, now)
        assert principal is not None and (principal.name, principal.scope) == ("operator", SUB.lower())
        almost = now + timedelta(seconds=SESSION_SECONDS - 1)
        assert session_principal(session, session_id, almost) is not None
        assert session_principal(session, session_id, now + timedelta(seconds=SESSION_SECONDS)) is None
        assert session_principal(session, operator, now) is None  # the token is no session id
    with store.begin() as session:
        close_session(session, session_id)
    with store() as session:
        assert session_principal(session, session_id, now) is None


def test_revoking_the_token_ends_its_sessions_and_a_token_has_a_bounded_number(
    store: sessionmaker[Session],
) -> None:
    with store.begin() as session:
        operator = create_token(session, "operator", SUB)
        first = opened(session, operator, utc_now() - timedelta(minutes=5))
        later = [opened(session, operator) for _ in range(MAX_SESSIONS_PER_TOKEN)]
    with store() as session:
        assert session.scalar(select(func.count()).select_from(UiSession)) == MAX_SESSIONS_PER_TOKEN
        assert session_principal(session, first) is None  # the oldest ended
        assert all(session_principal(session, session_id) is not None for session_id in later)
    with store.begin() as session:
        revoke_token(session, "operator")
    with store() as session:
        assert session.scalar(select(func.count()).select_from(UiSession)) == 0

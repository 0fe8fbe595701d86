"""Bring a store to a usable state: migrations applied, node image catalogue seeded, admin token present."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.node_images import seed_node_images
from trustedlaunch.control.tokens import ensure_bootstrap_token
from trustedlaunch.store.db import make_engine, migrate, session_factory

ATTEMPTS = 3  # several `tl` processes may start on the same fresh store at once


def open_store(database_url: str | None, token_file: Path) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory for `database_url` (default store if None), migrated and seeded, with a
    valid admin token in `token_file`."""
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    for attempt in range(ATTEMPTS):
        try:
            migrate(engine)
            with sessions.begin() as session:
                seed_node_images(session)
                ensure_bootstrap_token(session, token_file)
            break
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS - 1:
                raise
    return engine, sessions

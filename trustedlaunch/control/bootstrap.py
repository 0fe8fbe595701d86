"""Bring a store to a usable state: migrations applied, node image catalogue seeded, admin token present."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.control.node_image_versions import pin_release_build
from trustedlaunch.control.node_images import seed_node_images
from trustedlaunch.control.tokens import ensure_bootstrap_token
from trustedlaunch.store.db import make_engine, migrate, session_factory

ATTEMPTS = 3  # several `tl` processes may start on the same fresh store at once
ATTESTATION_ISSUER = "urn:trustedlaunch:attestation"  # `iss` of attestation tokens unless one is given
ATTESTATION_KEY_DIR = "attestation-keys"  # beside the admin token file


def default_token_file() -> Path:
    """Where the bootstrap admin token is written: `admin-token` in the user config dir."""
    return Path(platformdirs.user_config_dir("trustedlaunch")) / "admin-token"


def attestation_token_issuer(token_file: Path) -> TokenIssuer:
    """The installation's attestation token issuer: its signing keys live beside the admin token file, so
    the API server (which publishes the JWKS) and a reconciler running on its own sign with the same keys."""
    return TokenIssuer(token_file.parent / ATTESTATION_KEY_DIR, issuer=ATTESTATION_ISSUER)


def open_store(database_url: str | None, token_file: Path | None) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory for `database_url` (default store if None), migrated and seeded, with a
    valid admin token in `token_file` (None: no admin token, as a reconciler running on its own)."""
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    for attempt in range(ATTEMPTS):
        try:
            migrate(engine)
            with sessions.begin() as session:
                seed_node_images(session)
                pin_release_build(session)
                if token_file is not None:
                    ensure_bootstrap_token(session, token_file)
            break
        except (IntegrityError, OperationalError):
            if attempt == ATTEMPTS - 1:
                raise
    return engine, sessions

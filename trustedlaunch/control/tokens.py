"""API bearer tokens: stored as SHA-256 digests; a bootstrap admin token is written to a 0600 file."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from trustedlaunch.store.models import ApiToken

BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
TOKEN_PREFIX = "tl_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str) -> str:
    """Create a token called `name` and return its plaintext (the only time it is available)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_sha256=_digest(token)))
    return token


def token_is_valid(session: Session, token: str) -> bool:
    """Whether `token` matches a stored digest."""
    digest = _digest(token)
    stored = session.scalar(select(ApiToken.token_sha256).where(ApiToken.token_sha256 == digest))
    return stored is not None and hmac.compare_digest(stored, digest)


def ensure_bootstrap_token(session: Session, token_file: Path) -> None:
    """Make sure `token_file` holds a valid admin token; (re)create it if missing or stale. Mode 0600."""
    if token_file.is_file() and token_is_valid(session, token_file.read_text().strip()):
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

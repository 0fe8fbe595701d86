"""Dashboard fixtures: real verdicts (swtpm quote + real verifier), the real app over a temp SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from web_helpers import Seeded, Verdicts, real_verdicts, seed_store

from trustedlaunch.api.app import create_app


@pytest.fixture(scope="session")
def verdicts(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Verdicts:
    """The real verdicts on one real quote of the RHEL 8 event log."""
    return real_verdicts(testdata, tmp_path_factory.mktemp("quote"))


@dataclasses.dataclass
class Dashboard:
    """A signed-in client of the real app, its store and the seeded rows."""

    client: TestClient
    sessions: sessionmaker[Session]
    token: str
    seeded: Seeded


def sign_in(client: TestClient, token: str) -> None:
    """Sign in through the login form (the cookie stays in the client)."""
    response = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[TestClient]:
    """A client of the real app on `tmp_path/control.db` with no session and no bearer header; its requests
    come from the dashboard's own origin, as a browser's from the dashboard's pages."""
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "config" / "admin-token")
    with TestClient(app) as client:
        client.headers["Origin"] = str(client.base_url).rstrip("/")
        yield client


@pytest.fixture
def dashboard(anonymous: TestClient, tmp_path: Path, verdicts: Verdicts) -> Dashboard:
    """The seeded store and a client signed in with the bootstrap admin token."""
    token = (tmp_path / "config" / "admin-token").read_text().strip()
    sessions = anonymous.app.state.sessions  # type: ignore[attr-defined]
    seeded = seed_store(sessions, verdicts)
    sign_in(anonymous, token)
    return Dashboard(anonymous, sessions, token, seeded)


@pytest.fixture(scope="session")
def other_vtpm(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Verdicts:
    """The same log quoted by another fresh swtpm: another vTPM, so another attestation key."""
    return real_verdicts(testdata, tmp_path_factory.mktemp("quote-other-vtpm"))

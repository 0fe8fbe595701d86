"""A throwaway PostgreSQL server for tests, run from Debian's binaries (/usr/lib/postgresql/N/bin) on a Unix
socket in a temporary directory. PostgreSQL refuses to run as root, so under root (CI) the server runs as
the `postgres` user the Debian package creates."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"


def postgres_bin_dir() -> Path | None:
    """The bin dir of the newest PostgreSQL installed from Debian's packages, or None."""
    versions = sorted(
        (path for path in POSTGRES_ROOT.glob("*/bin") if (path / "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


class PostgresServer:
    """A running server; `database_url` makes a fresh, empty database."""

    def __init__(self, socket_dir: Path, superuser: str) -> None:
        self.socket_dir = socket_dir
        self.superuser = superuser

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir), user=self.superuser, dbname="postgres", autocommit=True
        )

    def create_database(self) -> str:
        """Create an empty database; returns its SQLAlchemy URL (psycopg 3 over the Unix socket)."""
        name = f"tl_{uuid.uuid4().hex[:12]}"
        with self._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://{self.superuser}@/{name}?host={self.socket_dir}"

    def drop_database(self, url: str) -> None:
        """Drop the database of `url` (its connections are closed first)."""
        name = make_url(url).database
        with self._admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


@contextmanager
def postgres_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a fresh temporary dir (trust auth, Unix socket only, no fsync); stopped and
    removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    if os.geteuid() == 0:
        server_user = pwd.getpwnam(SERVER_USER)
        os.chown(base, server_user.pw_uid, server_user.pw_gid)
        superuser = SERVER_USER
    else:
        superuser = pwd.getpwuid(os.geteuid()).pw_name
    data = base / "data"
    log_file = base / "server.log"
    try:
        subprocess.run(
            _as_server_user(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", superuser, "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
            cwd=base,  # the server user may not enter the caller's working dir
        )
        options = (
            f"-k {base} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        started = subprocess.run(
            _as_server_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options, "-w", "start"]
            ),
            capture_output=True,
            text=True,
            check=False,
            cwd=base,
        )
        if started.returncode != 0:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}{log}")
        try:
            yield PostgresServer(base, superuser)
        finally:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                check=False,
                cwd=base,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""Engine and session factory: SQLite (WAL) in the user data dir by default; `TL_DATABASE_URL` overrides."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DATABASE_URL_ENV = "TL_DATABASE_URL"
SQLITE_POOL_SIZE = 40  # one connection per server worker thread: no connect/PRAGMA cost per request
# PostgreSQL: a server process per connection; kept ones for the usual load, more on bursts (<= 40 threads)
POSTGRESQL_POOL_SIZE = 10
POSTGRESQL_MAX_OVERFLOW = 30
POSTGRESQL_DRIVER = "psycopg"  # psycopg 3, the driver installed with trustedlaunch
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x746C6D69  # PostgreSQL advisory lock id of migrations ("tlmi")


def default_database_url() -> str:
    """`TL_DATABASE_URL` if set, else a SQLite file `control.db` in the user data dir."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    data_dir = Path(platformdirs.user_data_dir("trustedlaunch"))
    return f"sqlite:///{data_dir / 'control.db'}"


def _enable_sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default: `default_database_url()`); SQLite files get WAL mode and foreign keys;
    a `postgresql://` URL without a driver uses psycopg 3."""
    parsed = make_url(url or default_database_url())
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_SIZE,
        )
        event.listen(engine, "connect", _enable_sqlite_wal)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{POSTGRESQL_DRIVER}")
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=POSTGRESQL_POOL_SIZE,
            max_overflow=POSTGRESQL_MAX_OVERFLOW,
        )
    return create_engine(parsed, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration bound to `engine` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates '%': escape it (URL-quoted socket paths and passwords contain it)
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["engine"] = engine
    return config


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Hold a lock that every process migrating the same database takes: a SQLite file's sibling lock file
    or a PostgreSQL advisory lock. Without it, two processes starting on a fresh store (uvicorn workers,
    several `tl` commands) both see no schema and both create it."""
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite":
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    if engine.url.get_backend_name() == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        return
    yield


def migrate(engine: Engine) -> None:
    """Apply every migration up to head (`alembic upgrade head`), one process at a time."""
    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)

"""Alembic environment: runs migrations on the engine handed over by `store.db.migrate` (or the URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

from trustedlaunch.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run_online(engine: Engine) -> None:
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


def _run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    handed_over = config.attributes.get("engine")
    _run_online(
        handed_over
        if handed_over is not None
        else create_engine(config.get_main_option("sqlalchemy.url") or "")
    )

"""Alembic revisions, applied in order by `store.db.migrate`."""

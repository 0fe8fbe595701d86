"""Timestamps as stored: SQLite drops the zone, so every value read back is normalised to UTC here."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (naive values are UTC as written by the store)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a trailing Z, as ARM writes timestamps; None stays None."""
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")

"""Timestamps as ARM writes them (the store hands back aware UTC datetimes: store.models.UtcDateTime)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    """An aware datetime as ISO 8601 UTC with a trailing Z, as ARM writes timestamps; None stays None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

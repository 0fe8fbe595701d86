"""The dashboard's pictures, computed on the server: a node's attestation timeline (one tick per attestation,
its height its duration) and the fleet's "% attested over time" (one bar per time bucket). The templates
draw them as inline SVG (no script, classes styled by the style sheet), so the strict CSP stays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from trustedlaunch.control.records import AttestationRecord

WIDTH = 800  # the viewBox; the SVG scales to its container
TIMELINE_HEIGHT = 90
FLEET_HEIGHT = 120
BASELINE_MARGIN = 16  # room under the marks for the axis labels
MIN_TICK_HEIGHT = 8
TICK_WIDTH = 4
FLEET_BUCKETS = 24
FLEET_WINDOW = timedelta(hours=24)


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Tick:
    """One attestation on a node's timeline."""

    record_id: int
    x: float
    y: float
    height: float
    passed: bool
    title: str


@dataclass(frozen=True)
class Timeline:
    """A node's attestations on a time axis, oldest left; a tick's height is its duration."""

    ticks: tuple[Tick, ...]
    start: datetime
    end: datetime
    longest_ms: float
    width: int = WIDTH
    height: int = TIMELINE_HEIGHT
    tick_width: int = TICK_WIDTH

    @property
    def baseline(self) -> int:
        """The y of the time axis."""
        return self.height - BASELINE_MARGIN


def node_timeline(records: Sequence[AttestationRecord]) -> Timeline | None:
    """The timeline of a node's `records` (any order); None without records."""
    if not records:
        return None
    ordered = sorted(records, key=lambda record: (record.time, record.id))
    start, end = ordered[0].time, ordered[-1].time
    span = (end - start).total_seconds() or 1.0
    longest = max(record.duration_ms for record in ordered) or 1.0
    baseline = TIMELINE_HEIGHT - BASELINE_MARGIN
    room = baseline - 4 - MIN_TICK_HEIGHT
    ticks = []
    for record in ordered:
        x = (WIDTH - TICK_WIDTH) * (record.time - start).total_seconds() / span
        height = MIN_TICK_HEIGHT + room * max(record.duration_ms, 0.0) / longest
        title = f"{_utc(record.time)} · {record.status} · {record.duration_ms:.0f} ms ({record.trigger})"
        ticks.append(
            Tick(record.id, round(x, 1), round(baseline - height, 1), round(height, 1), record.ok, title)
        )
    return Timeline(tuple(ticks), start, end, longest)


@dataclass(frozen=True)
class Bar:
    """The fleet at the end of one time bucket: how many of its attested nodes passed their latest
    attestation."""

    x: float
    y: float
    width: float
    height: float
    end: datetime
    attested: int
    total: int
    title: str

    @property
    def percent(self) -> float | None:
        """The share attested, None before any node was attested."""
        return 100.0 * self.attested / self.total if self.total else None


@dataclass(frozen=True)
class FleetChart:
    """% of the fleet's nodes attested, bucket by bucket."""

    bars: tuple[Bar, ...]
    start: datetime
    end: datetime
    width: int = WIDTH
    height: int = FLEET_HEIGHT

    @property
    def baseline(self) -> int:
        """The y of the time axis (0 %)."""
        return self.height - BASELINE_MARGIN


def bucket_ends(
    end: datetime, window: timedelta = FLEET_WINDOW, buckets: int = FLEET_BUCKETS
) -> list[datetime]:
    """The ends of the fleet chart's `buckets` equal time buckets covering the `window` before `end`."""
    step = window / buckets
    return [end - window + step * (number + 1) for number in range(buckets)]


def fleet_chart(counts: Sequence[tuple[int, int]], start: datetime, ends: Sequence[datetime]) -> FleetChart:
    """The fleet's % attested in each of the buckets from `start` to `ends` (bucket_ends), from the
    (attested, total) nodes at each end (control.overview.fleet_attested)."""
    baseline = FLEET_HEIGHT - BASELINE_MARGIN
    room = baseline - 4
    slot = WIDTH / len(ends)
    bars = []
    for number, (bucket_end, (attested, total)) in enumerate(zip(ends, counts, strict=True)):
        height = room * attested / total if total else 0.0
        share = (
            f"{attested}/{total} attested ({100 * attested / total:.0f} %)"
            if total
            else "no node attested yet"
        )
        bars.append(
            Bar(
                round(number * slot + 1, 1),
                round(baseline - height, 1),
                round(slot - 2, 1),
                round(height, 1),
                bucket_end,
                attested,
                total,
                f"until {_utc(bucket_end)}: {share}",
            )
        )
    return FleetChart(tuple(bars), start, ends[-1])

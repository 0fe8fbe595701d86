"""upgradeSettings.maxSurge: which values AKS accepts, and how many surge nodes a value means for a pool."""

from __future__ import annotations

import pytest

from trustedlaunch.control.limits import parse_max_surge, surge_nodes


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("0", (0, False)), ("1", (1, False)), ("1000", (1000, False)), ("0%", (0, True)), ("100%", (100, True))],
)
def test_valid_max_surge_values(value: str, parsed: tuple[int, bool]) -> None:
    assert parse_max_surge(value) == parsed


@pytest.mark.parametrize("value", ["", "-1", "1.5", "101%", "1001", "33 %", "%", "1%%", "one", "1e3", " 1"])
def test_invalid_max_surge_values(value: str) -> None:
    assert parse_max_surge(value) is None


@pytest.mark.parametrize(
    ("value", "count", "nodes"),
    [
        (None, 3, 0),
        ("0", 3, 0),
        ("1", 2, 1),
        ("5", 2, 5),
        ("33%", 3, 1),  # 0.99 rounds up to 1
        ("34%", 3, 2),  # 1.02 rounds up to 2, as AKS rounds fractional nodes up
        ("50%", 1, 1),
        ("100%", 4, 4),
        ("10%", 0, 0),
    ],
)
def test_surge_nodes_rounds_percentages_up(value: str | None, count: int, nodes: int) -> None:
    assert surge_nodes(value, count) == nodes

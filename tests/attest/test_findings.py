"""Findings read back from their stored form: every field round-trips, and a damaged record is an error
naming the field (the reconciler describes failures from stored records)."""

from __future__ import annotations

import pytest

from trustedlaunch.findings import Check, Finding

STORED = Finding(Check.BOOT_APPLICATION, "grub", "grubx64.efi is not in the image policy", 4, 17)


def test_a_stored_finding_reads_back_as_it_was_written() -> None:
    assert Finding.from_dict(STORED.to_dict()) == STORED
    bare = Finding(Check.QUOTE_SIGNATURE, "AK", "signature does not verify")
    assert Finding.from_dict(bare.to_dict()) == bare


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("check", "NoSuchCheck", "'check'"), ("check", None, "'check'"), ("component", 5, "'component'")],
)
def test_a_damaged_stored_finding_names_its_field(field: str, value: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Finding.from_dict({**STORED.to_dict(), field: value})


def test_a_position_that_is_not_a_number_reads_as_absent() -> None:
    finding = Finding.from_dict({**STORED.to_dict(), "pcr": "4", "eventIndex": True})
    assert (finding.pcr, finding.event_index) == (None, None)

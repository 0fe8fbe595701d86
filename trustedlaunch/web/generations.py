"""A node's history split by the VMs and vTPMs it ran on. Node names outlive their VMs: a reimage (or an
auto-repair) boots a new VM under the same name, and a reimage also makes a new vTPM. Every boot begins
with a Provisioning attestation (a new VM); a quote signed by another attestation key (AK) than the one
before comes from another vTPM (a reboot keeps the vTPM and its persisted AK). The AK of records whose
evidence retention stripped is unknown: they stay in the vTPM before them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trustedlaunch.control.attestation_monitor import Trigger
from trustedlaunch.control.records import AttestationRecord
from trustedlaunch.control.verifier import ak_name

AK_SHOWN = 12  # hex digits of the AK's name shown (after its algorithm id)


@dataclass(frozen=True)
class HistoryRow:
    """One attestation of a node with the VM and vTPM generation (1 = the oldest shown) it came from."""

    record: AttestationRecord
    vm: int
    vtpm: int
    ak: str | None  # the hex TPM name of the AK that signed its quote; None when unknown
    new_vm: bool  # a provisioning attestation: the first of a freshly booted VM
    new_vtpm: bool  # signed by another AK than the attestation before: the first of another vTPM
    current_vtpm: bool  # signed by the AK the node's vTPM has enrolled now

    @property
    def ak_short(self) -> str:
        """The AK's name, shortened for the page."""
        return "—" if self.ak is None else f"{self.ak[4 : 4 + AK_SHOWN]}…"


def _ak(record: AttestationRecord) -> str | None:
    if not record.ak_public:
        return None
    name = ak_name(record.ak_public)
    return None if name is None else name.hex()


def history_rows(records: Sequence[AttestationRecord], enrolled_ak: str | None) -> list[HistoryRow]:
    """`records` (newest first, as the page lists them) with their VM and vTPM generations; `enrolled_ak`
    is the node's enrolled AK name (None for a deleted node or one not enrolled yet)."""
    rows = []
    vm = vtpm = 0
    last_ak: str | None = None
    for record in reversed(records):
        ak = _ak(record)
        new_vm = record.trigger == Trigger.PROVISIONING
        new_vtpm = ak is not None and last_ak is not None and ak != last_ak
        vm += new_vm or vm == 0
        vtpm += new_vtpm or vtpm == 0
        last_ak = ak or last_ak
        current = ak is not None and ak == enrolled_ak
        rows.append(HistoryRow(record, vm, vtpm, ak, new_vm, new_vtpm, current))
    return rows[::-1]

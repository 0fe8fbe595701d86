"""A node's history split by the VMs and vTPMs it ran on. Node names outlive their VMs: a reimage (or an
auto-repair) boots a new VM under the same name, and a reimage also makes a new vTPM. Every boot begins
with a Provisioning attestation (a new VM); a quote signed by another attestation key (AK) than the one
before comes from another vTPM (a reboot keeps the vTPM and its persisted AK; a replaced vTPM never comes
back).

The AK of a record without a quote (evidence stripped by retention, or an agent that did not answer) is
unknown. Its vTPM is still known when another record of the same VM (boot) names the AK, or when the nearest
known AKs before and after it (the node's enrolled AK counting as the newest) are the same key; otherwise
its vTPM is unknown, and shown as unknown rather than as a neighbour's."""

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
    vtpm: int | None  # None: unknown (no quote kept of this VM and its neighbours disagree or are unknown)
    ak: str | None  # the hex TPM name of its vTPM's AK; None when unknown
    new_vm: bool  # a provisioning attestation: the first of a freshly booted VM
    new_vtpm: bool  # the first record of a known vTPM after records of another known one
    current_vtpm: bool  # its vTPM is the one the node has enrolled now

    @property
    def ak_short(self) -> str:
        """The AK's name, shortened for the page."""
        return "—" if self.ak is None else f"{self.ak[4 : 4 + AK_SHOWN]}…"


def _ak(record: AttestationRecord) -> str | None:
    if not record.ak_public:
        return None
    name = ak_name(record.ak_public)
    return None if name is None else name.hex()


def _vm_numbers(records: Sequence[AttestationRecord]) -> list[int]:
    """Each record's VM, oldest first: a Provisioning attestation starts the next one."""
    numbers, vm = [], 0
    for record in records:
        vm += record.trigger == Trigger.PROVISIONING or vm == 0
        numbers.append(vm)
    return numbers


def _vm_aks(records: Sequence[AttestationRecord], vms: list[int], enrolled_ak: str | None) -> dict[int, str]:
    """The AK of each VM whose vTPM is known: named by one of its records, or the same key named before and
    after it (the enrolled AK counts as after the newest)."""
    named: dict[int, str] = {}
    for record, vm in zip(records, vms, strict=True):
        ak = _ak(record)
        if ak is not None:
            named.setdefault(vm, ak)
    known = dict(named)
    last_vm = vms[-1] if vms else 0
    before: str | None = None
    for vm in range(1, last_vm + 1):
        if vm in named:
            before = named[vm]
            continue
        after = next((named[later] for later in range(vm + 1, last_vm + 1) if later in named), enrolled_ak)
        if before is not None and before == after:
            known[vm] = before
    return known


def history_rows(records: Sequence[AttestationRecord], enrolled_ak: str | None) -> list[HistoryRow]:
    """`records` (newest first, as the page lists them) with their VM and vTPM generations; `enrolled_ak`
    is the node's enrolled AK name (None for a deleted node or one not enrolled yet)."""
    oldest_first = list(reversed(records))
    vms = _vm_numbers(oldest_first)
    vm_aks = _vm_aks(oldest_first, vms, enrolled_ak)
    generations: dict[str, int] = {}
    rows = []
    previous: int | None = None
    for record, vm in zip(oldest_first, vms, strict=True):
        ak = _ak(record) or vm_aks.get(vm)
        vtpm = None if ak is None else generations.setdefault(ak, len(generations) + 1)
        new_vm = record.trigger == Trigger.PROVISIONING
        new_vtpm = vtpm is not None and previous is not None and vtpm != previous
        current = ak is not None and ak == enrolled_ak
        rows.append(HistoryRow(record, vm, vtpm, ak, new_vm, new_vtpm, current))
        previous = vtpm if vtpm is not None else previous
    return rows[::-1]

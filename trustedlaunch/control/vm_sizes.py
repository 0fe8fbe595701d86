"""The VM size catalogue (vm_sizes.json): Hyper-V generations, CPU architecture, GPU, cache and temp disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATALOGUE_FILE = Path(__file__).resolve().parent / "vm_sizes.json"


@dataclass(frozen=True)
class VmSize:
    """One VM size as the validation rules see it."""

    name: str
    vcpus: int
    memory_gib: int
    generations: tuple[str, ...]
    architecture: str
    gpu: str | None
    cache_gib: int
    temp_disk_gib: int

    @property
    def supports_gen2(self) -> bool:
        """Whether the size can run Hyper-V generation 2 (UEFI) VMs, which trusted launch needs."""
        return "V2" in self.generations

    @property
    def ephemeral_capacity_gib(self) -> int:
        """The largest ephemeral OS disk the size can hold (cache or temp disk placement)."""
        return max(self.cache_gib, self.temp_disk_gib)


@cache
def vm_sizes() -> dict[str, VmSize]:
    """Every catalogued size by lowercase name (Azure size names are case-insensitive)."""
    raw = json.loads(CATALOGUE_FILE.read_text())
    return {
        entry["name"].lower(): VmSize(
            name=entry["name"],
            vcpus=entry["vcpus"],
            memory_gib=entry["memoryGiB"],
            generations=tuple(entry["generations"]),
            architecture=entry["architecture"],
            gpu=entry["gpu"],
            cache_gib=entry["cacheGiB"],
            temp_disk_gib=entry["tempDiskGiB"],
        )
        for entry in raw["sizes"]
    }


def find_vm_size(name: str) -> VmSize | None:
    """The catalogued size called `name` (any case), or None."""
    return vm_sizes().get(name.lower())

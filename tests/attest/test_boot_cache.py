"""The verifier's cache of parsed event logs is bounded by estimated bytes, not entries: large logs evict the
oldest, and evidence verified with cache_log=False (an AK the caller does not know) takes no room."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attacks"))

from verifier_evidence import SoftwareAk, bulk_log

from trustedlaunch.attest.machine_state import BOOT_CACHE_BYTES, boot_cache_bytes, clear_boot_cache
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.verifier import verify

BASE_LOG = "qemu-ovmf/shim_evlog.bin"
NONCE = b"\x01" * 32
ANY_BOOT = Policy(allow_any=True)


@pytest.fixture
def empty_cache() -> Iterator[None]:
    clear_boot_cache()
    yield
    clear_boot_cache()


def test_large_logs_stay_within_the_byte_bound(testdata: Path, empty_cache: None) -> None:
    base = (testdata / BASE_LOG).read_bytes()
    key = SoftwareAk()
    sizes = []
    for tag in range(8):  # ~8 x 10 MB of parsed logs: far above the bound
        evidence = key.evidence(NONCE, bulk_log(base, 770_000, tag))
        assert verify(evidence, nonce=NONCE, policy=ANY_BOOT).ok
        sizes.append(boot_cache_bytes())
    assert 0 < sizes[0] < sizes[1]  # each one is kept ...
    assert max(sizes) <= BOOT_CACHE_BYTES < sizes[0] * len(sizes)  # ... until the oldest make room

    before = boot_cache_bytes()
    unknown = key.evidence(NONCE, bulk_log(base, 770_000, 99))
    assert verify(unknown, nonce=NONCE, policy=ANY_BOOT, cache_log=False).ok
    assert boot_cache_bytes() == before


def test_a_known_log_is_parsed_once(testdata: Path, empty_cache: None) -> None:
    evidence = SoftwareAk().evidence(NONCE, (testdata / BASE_LOG).read_bytes())
    assert verify(evidence, nonce=NONCE, policy=ANY_BOOT).ok
    cached = boot_cache_bytes()
    assert cached > len(evidence.event_log)
    assert verify(evidence, nonce=NONCE, policy=ANY_BOOT).ok
    assert boot_cache_bytes() == cached

"""Hypothesis properties of every fuzz target: arbitrary bytes and mutated real inputs (the committed seed
corpus: real event logs, swtpm-made TPM structures, real EFI binaries and varstores...) make the parser
return or raise its own operator error, never anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS, Target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = sorted(TARGETS)
# PE and varstore inputs go through a file and third-party parsers: fewer examples keep CI fast.
EXAMPLES = {"pe": 60, "varstore": 40, "gce": 100}
DEFAULT_EXAMPLES = 150


def _seeds(target: Target) -> list[Path]:
    return sorted(target.corpus.glob("seed-*"))


def _settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_target_has_real_seeds(name: str) -> None:
    seeds = _seeds(TARGETS[name])
    assert seeds, f"fuzz/corpus/{name} has no seed (run fuzz/make_corpus.py)"
    assert all(seed.stat().st_size <= TARGETS[name].max_len for seed in seeds)


# Seeds that are real inputs the parser must accept (keylime's "bogus" log is text garbage on purpose).
_MUST_FAIL_SEEDS = {"seed-keylime-binary_bios_measurements-bogus"}


@pytest.mark.parametrize("name", NAMES)
def test_real_seeds_are_accepted(name: str) -> None:
    target = TARGETS[name]
    for seed in _seeds(target):
        data = seed.read_bytes()
        if seed.name in _MUST_FAIL_SEEDS:
            with pytest.raises(target.expected):
                target.run(data)
        else:
            target.run(data)  # a real input: no error at all


@pytest.mark.parametrize("name", NAMES)
def test_arbitrary_bytes_raise_only_the_modules_error(name: str) -> None:
    target = TARGETS[name]

    @_settings(name)
    @given(st.binary(max_size=min(target.max_len, 2048)))
    def run(data: bytes) -> None:
        target.check(data)

    run()


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real seed with a few byte flips, overwrites, insertions, deletions or a truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "u32"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        else:  # an interesting 32-bit value over a size or count field
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(data)]))
            data[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
    return bytes(data)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_real_inputs_raise_only_the_modules_error(name: str) -> None:
    target = TARGETS[name]
    seeds = [seed.read_bytes() for seed in _seeds(target)]

    @_settings(name)
    @given(_mutated(seeds))
    def run(data: bytes) -> None:
        target.check(data)

    run()

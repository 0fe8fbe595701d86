"""The bank proxy's rewrite of TPM_CAP_PCRS answers, on answers of the real swtpm."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from trustedlaunch.tpm.bankproxy import TPM_CAP_PCRS, TPM_CC_GET_CAPABILITY, only_allocated_banks
from trustedlaunch.tpm.swtpm import HOST, Swtpm

TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512 = 0x0004, 0x000B, 0x000C, 0x000D
GET_PCR_ALLOCATION = struct.pack(">HII", 0x8001, 22, TPM_CC_GET_CAPABILITY) + struct.pack(
    ">III", TPM_CAP_PCRS, 0, 1
)


def _ask(tpm: Swtpm, command: bytes) -> bytes:
    with socket.create_connection((HOST, tpm.port), timeout=10) as connection:
        connection.sendall(command)
        return connection.recv(4096)


def _banks(response: bytes) -> dict[int, bytes]:
    """Hash algorithm -> PCR select bitmap of a TPM_CAP_PCRS answer (checking its sizes on the way)."""
    assert struct.unpack(">I", response[2:6])[0] == len(response)
    count, offset, banks = struct.unpack(">I", response[15:19])[0], 19, {}
    for _ in range(count):
        algorithm, size = struct.unpack(">HB", response[offset : offset + 3])
        banks[algorithm] = response[offset + 3 : offset + 3 + size]
        offset += 3 + size
    assert offset == len(response)
    return banks


def test_unallocated_banks_are_dropped_and_the_rest_is_unchanged(tmp_path: Path) -> None:
    with Swtpm(tmp_path) as tpm:
        tpm.run(["tpm2_pcrallocate", "sha1:all+sha256:all+sha384:none+sha512:none"])
    with Swtpm(tmp_path) as tpm:  # a new allocation takes effect at the next TPM2_Startup
        answer = _ask(tpm, GET_PCR_ALLOCATION)
        other = struct.pack(">HII", 0x8001, 12, 0x17B) + struct.pack(">H", 8)  # GetRandom
        random_answer = _ask(tpm, other)
    before = _banks(answer)
    assert set(before) == {TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512}
    assert not any(before[TPM_ALG_SHA384]) and not any(before[TPM_ALG_SHA512])
    filtered = only_allocated_banks(GET_PCR_ALLOCATION, answer)
    assert _banks(filtered) == {TPM_ALG_SHA1: before[TPM_ALG_SHA1], TPM_ALG_SHA256: before[TPM_ALG_SHA256]}
    assert filtered[:2] == answer[:2] and filtered[6:15] == answer[6:15]  # tag, code, moreData, capability
    assert only_allocated_banks(other, random_answer) == random_answer


def test_an_answer_with_every_bank_allocated_passes_unchanged() -> None:
    with Swtpm() as tpm:  # a fresh swtpm allocates all its banks
        answer = _ask(tpm, GET_PCR_ALLOCATION)
    assert all(any(select) for select in _banks(answer).values())
    assert only_allocated_banks(GET_PCR_ALLOCATION, answer) == answer

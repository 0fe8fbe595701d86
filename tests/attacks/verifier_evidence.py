"""Evidence an attacker makes without a TPM, for the verifier token attacks (test_verifier_tokens.py): a P-256
key made in software posing as an AK, quotes it signs itself (right nonce, PCR digest of the replayed
log: everything a TPM quote has), and large event logs of many small events."""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from trustedlaunch.attest.evidence import Evidence
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.types import ALGORITHMS_BY_BANK

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_ECC, TPM_ALG_ECDSA, TPM_ALG_SHA256, TPM_ALG_NULL = 0x0023, 0x0018, 0x000B, 0x0010
TPM_ECC_NIST_P256 = 0x0003
# fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign: an AK's attributes
AK_ATTRIBUTES = 0x00050472
EV_EVENT_TAG = 0x00000006


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class SoftwareAk:
    """A P-256 key in this process that presents itself as a restricted TPM signing key."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.public = (
            struct.pack(">HHI", TPM_ALG_ECC, TPM_ALG_SHA256, AK_ATTRIBUTES)
            + _tpm2b(b"")  # authPolicy
            + struct.pack(
                ">HHHHH", TPM_ALG_NULL, TPM_ALG_ECDSA, TPM_ALG_SHA256, TPM_ECC_NIST_P256, TPM_ALG_NULL
            )
            + _tpm2b(numbers.x.to_bytes(32, "big"))
            + _tpm2b(numbers.y.to_bytes(32, "big"))
        )  # TPMT_PUBLIC

    def quote(self, nonce: bytes, pcrs: dict[int, bytes]) -> tuple[bytes, bytes]:
        """A TPMS_ATTEST quote of the sha256 `pcrs` over `nonce`, and its TPMT_SIGNATURE by this key."""
        bitmap = bytearray(3)
        for pcr in pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        digest = hashlib.sha256(b"".join(value for _, value in sorted(pcrs.items()))).digest()
        attest = (
            struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
            + _tpm2b(b"\x00\x0b" + bytes(32))  # qualifiedSigner
            + _tpm2b(nonce)  # extraData
            + struct.pack(">QIIB", 1_000_000, 1, 0, 1)  # clockInfo
            + struct.pack(">Q", 0)  # firmwareVersion
            + struct.pack(">IHB", 1, TPM_ALG_SHA256, 3)
            + bytes(bitmap)
            + _tpm2b(digest)
        )
        r, s = decode_dss_signature(self.key.sign(attest, ec.ECDSA(hashes.SHA256())))
        signature = struct.pack(">HH", TPM_ALG_ECDSA, TPM_ALG_SHA256) + _tpm2b(r.to_bytes(32, "big"))
        return attest, signature + _tpm2b(s.to_bytes(32, "big"))

    def evidence(self, nonce: bytes, event_log: bytes) -> Evidence:
        """Evidence for `event_log` whose quote matches the log's replay, as a TPM holding it would sign."""
        pcrs = replay(parse_event_log(event_log))["sha256"]
        attest, signature = self.quote(nonce, pcrs)
        return Evidence(self.public, attest, signature, event_log)


def bulk_log(base: bytes, size: int, tag: int) -> bytes:
    """`base` (a crypto-agile log) followed by small PCR16 events up to about `size` bytes; `tag` makes the
    log's bytes unique."""
    log = parse_event_log(base)
    digests = b"".join(
        struct.pack("<H", ALGORITHMS_BY_BANK[bank].alg_id) + hashlib.new(bank, b"%d" % tag).digest()
        for bank in log.banks
    )
    event = struct.pack("<III", 16, EV_EVENT_TAG, len(log.banks)) + digests + struct.pack("<I", 4)
    count = max(0, (size - len(base)) // (len(event) + 4))
    return base + b"".join(event + struct.pack("<I", tag * count + i) for i in range(count))

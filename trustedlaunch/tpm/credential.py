"""TPM2_MakeCredential in software (TPM 2.0 Part 1 §24, Part 3 §12.6): binds an AK to an EK.

The verifier encrypts a fresh secret so that only the TPM holding the EK's private key, and only for an
object with the AK's Name loaded in it, can recover it with TPM2_ActivateCredential.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.structures import (
    ALG_AES,
    ALG_CFB,
    ECC_NIST_P256,
    HASH_ALGORITHMS,
    EccParameters,
    HashAlgorithm,
    TpmtPublic,
)

TPM2_TOOLS_MAGIC: Final = 0xBADCC0DE
TPM2_TOOLS_CREDENTIAL_VERSION: Final = 1

# TPMA_OBJECT bits an attestation key must (and must not) have.
ATTR_FIXED_TPM: Final = 1 << 1
ATTR_FIXED_PARENT: Final = 1 << 4
ATTR_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
ATTR_RESTRICTED: Final = 1 << 16
ATTR_DECRYPT: Final = 1 << 17
ATTR_SIGN: Final = 1 << 18
AK_REQUIRED_ATTRIBUTES: Final = (
    ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN | ATTR_RESTRICTED | ATTR_SIGN
)


class CredentialError(TrustedLaunchError):
    """A credential cannot be made for this EK or AK Name (unsupported key, bad sizes)."""


@dataclass(frozen=True)
class CredentialChallenge:
    """The output of MakeCredential: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents."""

    credential_blob: bytes  # TPM2B_DIGEST(integrity HMAC) || encIdentity
    encrypted_secret: bytes  # RSA-OAEP encrypted seed, or the marshalled ephemeral TPMS_ECC_POINT

    def to_tpm2_tools(self) -> bytes:
        """The file `tpm2_activatecredential -i` reads (tpm2-tools 5.x, as written by tpm2_makecredential)."""
        return (
            struct.pack(">II", TPM2_TOOLS_MAGIC, TPM2_TOOLS_CREDENTIAL_VERSION)
            + _tpm2b(self.credential_blob)
            + _tpm2b(self.encrypted_secret)
        )


def _tpm2b(buffer: bytes) -> bytes:
    return struct.pack(">H", len(buffer)) + buffer


def kdfa(
    hash_alg: HashAlgorithm, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """TPM KDFa (SP 800-108 counter mode with HMAC; Part 1 §11.4.10.2)."""
    kdf = KBKDFHMAC(
        algorithm=hash_alg.crypto_hash(),
        mode=Mode.CounterMode,
        length=(bits + 7) // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context_u + context_v,
        fixed=None,
    )
    return kdf.derive(key)


def kdfe(hash_alg: HashAlgorithm, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """TPM KDFe (SP 800-56A concatenation KDF; Part 1 §11.4.10.3)."""
    other_info = label + b"\x00" + party_u + party_v
    return ConcatKDFHash(hash_alg.crypto_hash(), (bits + 7) // 8, other_info).derive(z)


def _seed_for(ek: TpmtPublic) -> tuple[bytes, bytes]:
    """A fresh seed and its encryption to the EK (RSA-OAEP or ECDH + KDFe), with label "IDENTITY"."""
    name_alg = ek.name_alg
    key = ek.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        seed = secrets.token_bytes(name_alg.digest_size)
        oaep = padding.OAEP(
            mgf=padding.MGF1(name_alg.crypto_hash()), algorithm=name_alg.crypto_hash(), label=b"IDENTITY\x00"
        )
        return seed, key.encrypt(seed, oaep)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    size = (key.curve.key_size + 7) // 8
    ephemeral = ec.generate_private_key(key.curve)
    z = ephemeral.exchange(ec.ECDH(), key)
    ephemeral_point = ephemeral.public_key().public_numbers()
    ephemeral_x = ephemeral_point.x.to_bytes(size, "big")
    ek_x = key.public_numbers().x.to_bytes(size, "big")
    seed = kdfe(name_alg, z, b"IDENTITY", ephemeral_x, ek_x, name_alg.digest_size * 8)
    return seed, _tpm2b(ephemeral_x) + _tpm2b(ephemeral_point.y.to_bytes(size, "big"))


def make_credential(ek: TpmtPublic, ak_name: bytes, secret: bytes) -> CredentialChallenge:
    """TPM2_MakeCredential: protect `secret` for the TPM holding `ek`, bound to the object `ak_name`."""
    name_alg = ek.name_alg
    symmetric = ek.parameters.symmetric
    if symmetric.algorithm != ALG_AES or symmetric.mode != ALG_CFB:
        raise CredentialError(
            f"EK: symmetric algorithm 0x{symmetric.algorithm:04x} mode 0x{symmetric.mode:04x} "
            "is not AES-CFB; "
            "only EKs from the TCG templates (L-1 RSA 2048, L-2 ECC P-256) are supported"
        )
    if isinstance(ek.parameters, EccParameters) and ek.parameters.curve_id != ECC_NIST_P256:
        raise CredentialError(f"EK: curve 0x{ek.parameters.curve_id:04x} is not NIST P-256 (template L-2)")
    if not 0 < len(secret) <= name_alg.digest_size:
        raise CredentialError(f"credential secret must be 1..{name_alg.digest_size} bytes, got {len(secret)}")
    name_hash = HASH_ALGORITHMS.get(int.from_bytes(ak_name[:2], "big"))
    if name_hash is None or len(ak_name) != 2 + name_hash.digest_size:
        raise CredentialError(f"AK name {ak_name.hex()} is not a supported nameAlg || digest")
    seed, encrypted_seed = _seed_for(ek)
    symmetric_key = kdfa(name_alg, seed, b"STORAGE", ak_name, b"", symmetric.key_bits)
    # The TPM encrypts the credential with AES-CFB and an all-zero IV (the key is single-use).
    encryptor = Cipher(algorithms.AES(symmetric_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(_tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", name_alg.digest_size * 8)
    integrity = crypto_hmac.HMAC(hmac_key, name_alg.crypto_hash())
    integrity.update(enc_identity + ak_name)
    return CredentialChallenge(_tpm2b(integrity.finalize()) + enc_identity, encrypted_seed)


def new_activation_secret(size: int = 32) -> bytes:
    """A fresh random secret for one credential challenge (never reuse it)."""
    return secrets.token_bytes(size)


def verify_activation(expected: bytes, recovered: bytes) -> None:
    """Constant-time check that the attester recovered the challenge secret; else AK_BINDING."""
    if not hmac.compare_digest(expected, recovered):
        raise AttestationError(
            Finding(
                Check.AK_BINDING,
                "AK",
                "the secret returned by TPM2_ActivateCredential is wrong: the AK is not loaded in the TPM "
                "that holds this EK (or the challenge was not answered by that TPM)",
            )
        )


def check_ak_attributes(ak: TpmtPublic) -> None:
    """Reject an AK that is not a restricted, TPM-generated, non-duplicable signing key (AK_BINDING)."""
    missing = AK_REQUIRED_ATTRIBUTES & ~ak.object_attributes
    names = {
        ATTR_FIXED_TPM: "fixedTPM",
        ATTR_FIXED_PARENT: "fixedParent",
        ATTR_SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
        ATTR_RESTRICTED: "restricted",
        ATTR_SIGN: "sign",
    }
    problems = [f"missing {label}" for bit, label in names.items() if missing & bit]
    if ak.object_attributes & ATTR_DECRYPT:
        problems.append("has decrypt")
    if problems:
        raise AttestationError(
            Finding(
                Check.AK_BINDING,
                "AK",
                f"objectAttributes 0x{ak.object_attributes:08x} ({', '.join(problems)}): "
                "not an attestation key, a quote signed by it could be forged with TPM2_Sign",
            )
        )

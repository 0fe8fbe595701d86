"""TPM 2.0 wire structures (TPM 2.0 Part 2): parsing and, where needed, serialization.

Every parse error is a `TpmStructureError` naming the structure, the field and the byte offset.
Trailing bytes after a top-level structure are an error.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustedlaunch.errors import TrustedLaunchError

# TPM_ALG_ID values (TCG Algorithm Registry).
ALG_RSA: Final = 0x0001
ALG_SHA1: Final = 0x0004
ALG_AES: Final = 0x0006
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_RSAPSS: Final = 0x0016
ALG_OAEP: Final = 0x0017
ALG_ECDSA: Final = 0x0018
ALG_ECDH: Final = 0x0019
ALG_ECDAA: Final = 0x001A
ALG_SM2: Final = 0x001B
ALG_ECSCHNORR: Final = 0x001C
ALG_ECMQV: Final = 0x001D
ALG_MGF1: Final = 0x0007
ALG_KDF1_SP800_56A: Final = 0x0020
ALG_KDF2: Final = 0x0021
ALG_KDF1_SP800_108: Final = 0x0022
ALG_ECC: Final = 0x0023
ALG_CFB: Final = 0x0043

# TPM_ECC_CURVE values.
ECC_NIST_P256: Final = 0x0003
ECC_NIST_P384: Final = 0x0004
ECC_NIST_P521: Final = 0x0005

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018

# The PC Client platform has 24 PCRs: a selection bitmap is 3 bytes; 4 is the most any TPM uses.
PCR_SELECT_MIN: Final = 3
PCR_SELECT_MAX: Final = 4
MAX_PCR_BANKS: Final = 16


@dataclass(frozen=True)
class HashAlgorithm:
    """A TPM hash algorithm: its TPM_ALG_ID, bank name and cryptography/hashlib equivalents."""

    alg_id: int
    name: str  # "sha1", "sha256", ... (hashlib name, also the PCR bank name)
    digest_size: int

    def crypto_hash(self) -> hashes.HashAlgorithm:
        """A fresh cryptography hash object for this algorithm."""
        return _CRYPTO_HASHES[self.name]()

    def digest(self, data: bytes) -> bytes:
        """Hash `data` with this algorithm."""
        return hashlib.new(self.name, data).digest()


_CRYPTO_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

HASH_ALGORITHMS: Final[dict[int, HashAlgorithm]] = {
    ALG_SHA1: HashAlgorithm(ALG_SHA1, "sha1", 20),
    ALG_SHA256: HashAlgorithm(ALG_SHA256, "sha256", 32),
    ALG_SHA384: HashAlgorithm(ALG_SHA384, "sha384", 48),
    ALG_SHA512: HashAlgorithm(ALG_SHA512, "sha512", 64),
}
HASH_BY_NAME: Final[dict[str, HashAlgorithm]] = {h.name: h for h in HASH_ALGORITHMS.values()}

_CURVES: Final[dict[int, type[ec.EllipticCurve]]] = {
    ECC_NIST_P256: ec.SECP256R1,
    ECC_NIST_P384: ec.SECP384R1,
    ECC_NIST_P521: ec.SECP521R1,
}


class TpmStructureError(TrustedLaunchError):
    """A TPM structure that does not parse; names the structure, field and byte offset."""

    def __init__(self, structure: str, field_name: str, offset: int, reason: str):
        super().__init__(f"{structure}.{field_name} at byte offset {offset} (0x{offset:x}): {reason}")
        self.structure = structure
        self.field_name = field_name
        self.offset = offset
        self.reason = reason


class PcrSelectionError(TpmStructureError):
    """A TPML_PCR_SELECTION with duplicate banks or a malformed sizeofSelect."""


class _Reader:
    """A bounds-checked big-endian cursor that turns every short read into a TpmStructureError."""

    __slots__ = ("data", "pos", "structure")

    def __init__(self, data: bytes, structure: str):
        self.data = data
        self.pos = 0
        self.structure = structure

    def fail(self, field_name: str, reason: str, offset: int | None = None) -> TpmStructureError:
        return TpmStructureError(self.structure, field_name, self.pos if offset is None else offset, reason)

    def take(self, size: int, field_name: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise self.fail(
                field_name, f"needs {size} byte(s) but only {len(self.data) - self.pos} remain (truncated)"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        return int.from_bytes(self.take(2, field_name), "big")

    def u32(self, field_name: str) -> int:
        return int.from_bytes(self.take(4, field_name), "big")

    def u64(self, field_name: str) -> int:
        return int.from_bytes(self.take(8, field_name), "big")

    def tpm2b(self, field_name: str, max_size: int | None = None) -> bytes:
        start = self.pos
        size = self.u16(f"{field_name}.size")
        if max_size is not None and size > max_size:
            raise self.fail(f"{field_name}.size", f"size {size} exceeds the maximum of {max_size}", start)
        return self.take(size, f"{field_name}.buffer")

    def hash_alg(self, field_name: str) -> HashAlgorithm:
        start = self.pos
        alg = self.u16(field_name)
        found = HASH_ALGORITHMS.get(alg)
        if found is None:
            raise self.fail(field_name, f"unsupported hash algorithm 0x{alg:04x}", start)
        return found

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise self.fail("(end)", f"{len(self.data) - self.pos} unexpected trailing byte(s)")


# --- PCR selections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the PCR indices selected in it (ascending)."""

    hash: HashAlgorithm
    pcrs: tuple[int, ...]
    size_of_select: int = PCR_SELECT_MIN

    @property
    def bank(self) -> str:
        """The bank name, e.g. "sha256"."""
        return self.hash.name

    def to_bytes(self) -> bytes:
        """Serialize as TPMS_PCR_SELECTION."""
        bitmap = bytearray(self.size_of_select)
        for pcr in self.pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        return struct.pack(">HB", self.hash.alg_id, self.size_of_select) + bytes(bitmap)


def _read_pcr_selection_list(reader: _Reader, field_name: str) -> tuple[PcrSelection, ...]:
    start = reader.pos
    count = reader.u32(f"{field_name}.count")
    if count > MAX_PCR_BANKS:
        raise PcrSelectionError(
            reader.structure,
            f"{field_name}.count",
            start,
            f"{count} banks exceeds the maximum of {MAX_PCR_BANKS}",
        )
    selections: list[PcrSelection] = []
    seen: set[int] = set()
    for i in range(count):
        entry_offset = reader.pos
        item = f"{field_name}.pcrSelections[{i}]"
        alg_id = reader.u16(f"{item}.hash")
        size = reader.u8(f"{item}.sizeofSelect")
        if not PCR_SELECT_MIN <= size <= PCR_SELECT_MAX:
            raise PcrSelectionError(
                reader.structure,
                f"{item}.sizeofSelect",
                entry_offset + 2,
                f"sizeofSelect {size} is outside {PCR_SELECT_MIN}..{PCR_SELECT_MAX}",
            )
        if alg_id in seen:
            raise PcrSelectionError(
                reader.structure,
                f"{item}.hash",
                entry_offset,
                f"bank 0x{alg_id:04x} is selected more than once",
            )
        seen.add(alg_id)
        algorithm = HASH_ALGORITHMS.get(alg_id)
        if algorithm is None:
            raise reader.fail(f"{item}.hash", f"unsupported hash algorithm 0x{alg_id:04x}", entry_offset)
        bitmap = reader.take(size, f"{item}.pcrSelect")
        pcrs = tuple(byte * 8 + bit for byte in range(size) for bit in range(8) if bitmap[byte] >> bit & 1)
        selections.append(PcrSelection(algorithm, pcrs, size))
    return tuple(selections)


def parse_pcr_selection_list(data: bytes) -> tuple[PcrSelection, ...]:
    """Parse a whole TPML_PCR_SELECTION; duplicate banks and bad sizeofSelect raise PcrSelectionError."""
    reader = _Reader(data, "TPML_PCR_SELECTION")
    selections = _read_pcr_selection_list(reader, "")
    reader.finish()
    return selections


def encode_pcr_selection_list(selections: tuple[PcrSelection, ...] | list[PcrSelection]) -> bytes:
    """Serialize as TPML_PCR_SELECTION (in the given order; duplicates are NOT checked here)."""
    return struct.pack(">I", len(selections)) + b"".join(s.to_bytes() for s in selections)


# --- TPMS_ATTEST ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO: the selected PCRs and the digest of their values."""

    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class TpmsAttest:
    """TPMS_ATTEST. `quote` is set for TPM_ST_ATTEST_QUOTE; other types keep their body in `attested`."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: bytes
    quote: QuoteInfo | None

    def to_bytes(self) -> bytes:
        """Serialize as TPMS_ATTEST (the form the TPM signs)."""
        ci = self.clock_info
        head = struct.pack(">IH", self.magic, self.type)
        head += _tpm2b(self.qualified_signer) + _tpm2b(self.extra_data)
        head += struct.pack(
            ">QIIBQ", ci.clock, ci.reset_count, ci.restart_count, int(ci.safe), self.firmware_version
        )
        if self.quote is not None:
            return head + encode_pcr_selection_list(self.quote.pcr_select) + _tpm2b(self.quote.pcr_digest)
        return head + self.attested


def _tpm2b(buffer: bytes) -> bytes:
    return struct.pack(">H", len(buffer)) + buffer


def parse_tpms_attest(data: bytes) -> TpmsAttest:
    """Parse a TPMS_ATTEST (as written by `tpm2_quote -m` and in go-tpm-tools Quote.quote)."""
    reader = _Reader(data, "TPMS_ATTEST")
    magic = reader.u32("magic")
    attest_type = reader.u16("type")
    qualified_signer = reader.tpm2b("qualifiedSigner", 2 + 64)
    extra_data = reader.tpm2b("extraData", 64)
    clock = ClockInfo(
        clock=reader.u64("clockInfo.clock"),
        reset_count=reader.u32("clockInfo.resetCount"),
        restart_count=reader.u32("clockInfo.restartCount"),
        safe=reader.u8("clockInfo.safe") != 0,
    )
    firmware_version = reader.u64("firmwareVersion")
    body_start = reader.pos
    quote: QuoteInfo | None = None
    if attest_type == TPM_ST_ATTEST_QUOTE:
        selection = _read_pcr_selection_list(reader, "attested.quote.pcrSelect")
        digest = reader.tpm2b("attested.quote.pcrDigest", 64)
        quote = QuoteInfo(selection, digest)
        reader.finish()
    else:
        reader.pos = len(data)
    return TpmsAttest(
        magic, attest_type, qualified_signer, extra_data, clock, firmware_version, data[body_start:], quote
    )


# --- TPMT_PUBLIC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymmetricDefinition:
    """TPMT_SYM_DEF_OBJECT: algorithm (ALG_NULL when none), key bits and mode."""

    algorithm: int
    key_bits: int = 0
    mode: int = ALG_NULL


@dataclass(frozen=True)
class Scheme:
    """A TPMT_*_SCHEME or TPMT_KDF_SCHEME: scheme algorithm and its hash (None for ALG_NULL/RSAES)."""

    scheme: int
    hash: HashAlgorithm | None = None


@dataclass(frozen=True)
class RsaParameters:
    """TPMS_RSA_PARMS."""

    symmetric: SymmetricDefinition
    scheme: Scheme
    key_bits: int
    exponent: int  # 0 in the structure means the default 65537; stored resolved


@dataclass(frozen=True)
class EccParameters:
    """TPMS_ECC_PARMS."""

    symmetric: SymmetricDefinition
    scheme: Scheme
    curve_id: int
    kdf: Scheme


@dataclass(frozen=True, eq=False)
class TpmtPublic:
    """TPMT_PUBLIC for RSA and ECC keys. `raw` is the exact serialized form (used for the Name)."""

    type: int
    name_alg: HashAlgorithm
    object_attributes: int
    auth_policy: bytes
    parameters: RsaParameters | EccParameters
    unique: bytes | tuple[bytes, bytes]  # RSA modulus, or the ECC point (x, y)
    raw: bytes
    _key_cache: list[rsa.RSAPublicKey | ec.EllipticCurvePublicKey] = field(
        default_factory=list, repr=False, compare=False
    )  # one element, set by the parser

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TpmtPublic) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a cryptography object (built and validated once, when the structure is parsed)."""
        return self._key_cache[0]

    def name(self) -> bytes:
        """The TPM Name of the object: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", self.name_alg.alg_id) + self.name_alg.digest(self.raw)

    def to_tpm2b(self) -> bytes:
        """Serialize as TPM2B_PUBLIC (size-prefixed)."""
        return _tpm2b(self.raw)


def _read_symmetric(reader: _Reader, field_name: str) -> SymmetricDefinition:
    algorithm = reader.u16(f"{field_name}.algorithm")
    if algorithm == ALG_NULL:
        return SymmetricDefinition(ALG_NULL)
    return SymmetricDefinition(
        algorithm, reader.u16(f"{field_name}.keyBits"), reader.u16(f"{field_name}.mode")
    )


_RSA_SCHEMES: Final = frozenset({ALG_NULL, ALG_RSASSA, ALG_RSAES, ALG_RSAPSS, ALG_OAEP})
_ECC_SCHEMES: Final = frozenset(
    {ALG_NULL, ALG_ECDSA, ALG_ECDH, ALG_ECDAA, 0x001B, 0x001C, 0x001D}
)  # + SM2, Schnorr, MQV
_KDF_SCHEMES: Final = frozenset({ALG_NULL, 0x0007, 0x0020, 0x0021, 0x0022})  # MGF1, KDF1-56A, KDF2, KDF1-108


def _read_scheme(reader: _Reader, field_name: str, allowed: frozenset[int]) -> Scheme:
    start = reader.pos
    scheme = reader.u16(f"{field_name}.scheme")
    if scheme not in allowed:
        raise reader.fail(f"{field_name}.scheme", f"scheme 0x{scheme:04x} is not valid here", start)
    if scheme in (ALG_NULL, ALG_RSAES):
        return Scheme(scheme)
    hash_alg = reader.hash_alg(f"{field_name}.details.hashAlg")
    if scheme == ALG_ECDAA:
        reader.u16(f"{field_name}.details.count")
    return Scheme(scheme, hash_alg)


def _read_public(reader: _Reader) -> TpmtPublic:
    start = reader.pos
    key_type = reader.u16("type")
    if key_type not in (ALG_RSA, ALG_ECC):
        raise reader.fail("type", f"unsupported key type 0x{key_type:04x} (only RSA and ECC keys)", start)
    name_alg = reader.hash_alg("nameAlg")
    attributes = reader.u32("objectAttributes")
    auth_policy = reader.tpm2b("authPolicy", 64)
    parameters: RsaParameters | EccParameters
    unique: bytes | tuple[bytes, bytes]
    if key_type == ALG_RSA:
        symmetric = _read_symmetric(reader, "parameters.rsaDetail.symmetric")
        scheme = _read_scheme(reader, "parameters.rsaDetail.scheme", _RSA_SCHEMES)
        bits_offset = reader.pos
        key_bits = reader.u16("parameters.rsaDetail.keyBits")
        if key_bits not in (1024, 2048, 3072, 4096):
            raise reader.fail(
                "parameters.rsaDetail.keyBits", f"unsupported RSA key size {key_bits}", bits_offset
            )
        exponent = reader.u32("parameters.rsaDetail.exponent") or 65537
        parameters = RsaParameters(symmetric, scheme, key_bits, exponent)
        unique_offset = reader.pos
        unique = reader.tpm2b("unique.rsa", 512)
        if len(unique) * 8 != key_bits:
            raise reader.fail(
                "unique.rsa", f"modulus is {len(unique)} bytes for a {key_bits}-bit key", unique_offset
            )
    else:
        symmetric = _read_symmetric(reader, "parameters.eccDetail.symmetric")
        scheme = _read_scheme(reader, "parameters.eccDetail.scheme", _ECC_SCHEMES)
        curve_offset = reader.pos
        curve_id = reader.u16("parameters.eccDetail.curveID")
        if curve_id not in _CURVES:
            raise reader.fail(
                "parameters.eccDetail.curveID", f"unsupported curve 0x{curve_id:04x}", curve_offset
            )
        kdf = _read_scheme(reader, "parameters.eccDetail.kdf", _KDF_SCHEMES)
        parameters = EccParameters(symmetric, scheme, curve_id, kdf)
        unique_offset = reader.pos
        unique = (reader.tpm2b("unique.ecc.x", 66), reader.tpm2b("unique.ecc.y", 66))
    raw = reader.data[start : reader.pos]
    key = _public_key(parameters, unique, reader.structure, unique_offset)
    return TpmtPublic(key_type, name_alg, attributes, auth_policy, parameters, unique, raw, [key])


def _public_key(
    parameters: RsaParameters | EccParameters,
    unique: bytes | tuple[bytes, bytes],
    structure: str,
    offset: int,
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        if isinstance(parameters, RsaParameters):
            assert isinstance(unique, bytes)
            return rsa.RSAPublicNumbers(parameters.exponent, int.from_bytes(unique, "big")).public_key()
        assert isinstance(unique, tuple)
        x, y = (int.from_bytes(c, "big") for c in unique)
        return ec.EllipticCurvePublicNumbers(x, y, _CURVES[parameters.curve_id]()).public_key()
    except ValueError as exc:
        raise TpmStructureError(structure, "unique", offset, f"not a valid public key: {exc}") from None


def parse_tpmt_public(data: bytes) -> TpmtPublic:
    """Parse a bare TPMT_PUBLIC (e.g. go-tpm-tools Attestation.ak_pub)."""
    reader = _Reader(data, "TPMT_PUBLIC")
    public = _read_public(reader)
    reader.finish()
    return public


def parse_tpm2b_public(data: bytes) -> TpmtPublic:
    """Parse a size-prefixed TPM2B_PUBLIC (as written by `tpm2_createek -u`, `tpm2_createak -u`)."""
    reader = _Reader(data, "TPM2B_PUBLIC")
    size = reader.u16("size")
    if size != len(data) - 2:
        raise reader.fail("size", f"declares {size} byte(s) but {len(data) - 2} follow", 0)
    inner = _Reader(data[2:], "TPM2B_PUBLIC.publicArea")
    public = _read_public(inner)
    if inner.pos != size:
        raise TpmStructureError(
            "TPM2B_PUBLIC", "publicArea", 2 + inner.pos, "public area shorter than its size"
        )
    return public


# --- TPMT_SIGNATURE --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TpmtSignature:
    """TPMT_SIGNATURE: RSASSA/RSAPSS carry `signature`; ECDSA carries (r, s)."""

    sig_alg: int
    hash: HashAlgorithm
    signature: bytes = b""
    r: bytes = b""
    s: bytes = b""


def parse_tpmt_signature(data: bytes) -> TpmtSignature:
    """Parse a TPMT_SIGNATURE (as written by `tpm2_quote -s` and in go-tpm-tools Quote.raw_sig)."""
    reader = _Reader(data, "TPMT_SIGNATURE")
    sig_alg = reader.u16("sigAlg")
    if sig_alg in (ALG_RSASSA, ALG_RSAPSS):
        hash_alg = reader.hash_alg("signature.rsa.hash")
        signature = TpmtSignature(sig_alg, hash_alg, signature=reader.tpm2b("signature.rsa.sig", 512))
    elif sig_alg == ALG_ECDSA:
        hash_alg = reader.hash_alg("signature.ecdsa.hash")
        r = reader.tpm2b("signature.ecdsa.signatureR", 66)
        s = reader.tpm2b("signature.ecdsa.signatureS", 66)
        signature = TpmtSignature(sig_alg, hash_alg, r=r, s=s)
    else:
        raise reader.fail(
            "sigAlg", f"unsupported signature algorithm 0x{sig_alg:04x} (RSASSA, RSAPSS, ECDSA)", 0
        )
    reader.finish()
    return signature

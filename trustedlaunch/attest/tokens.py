"""Attestation tokens: a signed JWT (ES256) for every node that passed attestation, and the JWKS that lets a
relying party verify it with any standard JWT library.

Claims follow Azure guest attestation tokens where the meaning is the same (`x-ms-ver`,
`x-ms-attestation-type`, `secureboot`, `x-ms-azurevm-attested-pcrs`); what Azure has no claim for is under
`x-tl-*`: the node pool, the image version, every attested SHA-256 PCR (bank, index, value), the boot
applications with their digests and the kernel command line. Tokens are issued only for a TPM the platform
enrolled (EK certificate from the platform EK CA + credential activation), in two kinds:

* node tokens (the reconciler's, and the verifier API's for evidence verified by `poolId`): `sub` is the
  node name, `x-tl-node-pool` and `x-tl-image-version` its pool and node image version;
* verifier tokens for evidence verified against the caller's own policy: `sub` is "ak:" and the AK's TPM
  name (hex), `x-tl-node-pool` and `x-tl-image-version` are empty (a caller's policy vouches for no pool).

Signing keys are P-256 keys stored as PEM files (mode 0600) in a key directory, named by their RFC 7638
thumbprint (the JWT `kid`), with a `keys.json` manifest of the active key and the retired ones. `rotate()`
makes a new active key; a retired key stays in the JWKS until every token it signed has expired
(`max_ttl` after its retirement), then `prune()` deletes it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from trustedlaunch.attest.machine_state import REQUIRED_BANK
from trustedlaunch.attest.policy import boot_app_components
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.errors import TrustedLaunchError

ALGORITHM = "ES256"
DEFAULT_TTL = timedelta(hours=8)  # Azure guest attestation tokens are valid for 8 hours
MAX_TTL = timedelta(hours=24)
MANIFEST = "keys.json"
ATTESTATION_TYPE = "azurevm"
REQUIRED_CLAIMS = ("iss", "sub", "iat", "nbf", "exp", "jti")


class TokenError(TrustedLaunchError):
    """A token that cannot be issued (failed attestation, bad TTL) or does not verify."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key (kty, crv, x, y) without kid/use/alg."""
    jwk: dict[str, str] = ECAlgorithm.to_jwk(key, as_dict=True)
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def jwk_thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an EC public key: the key id."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the start (temp file, then an atomic rename)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    os.replace(temporary, path)


@dataclass(frozen=True)
class SigningKey:
    """One signing key of the directory; `retired_at` is None for the active key."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: datetime
    retired_at: datetime | None = None


def attestation_claims(
    result: AttestationResult, *, node: str, pool: str, image_version: str
) -> dict[str, Any]:
    """The attestation claims of a token for a passed result (registered JWT claims excepted)."""
    if not result.ok or result.summary is None:
        raise TokenError(f"node {node}: attestation failed, no token is issued")
    summary = result.summary
    pcrs = result.replayed_pcrs.get(REQUIRED_BANK, {})
    components = boot_app_components(summary.boot_apps)
    return {
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": ATTESTATION_TYPE,
        "secureboot": summary.secure_boot is True,
        "x-ms-azurevm-attested-pcrs": sorted(pcrs),
        "x-tl-node-pool": pool,
        "x-tl-image-version": image_version,
        "x-tl-pcrs": [
            {"bank": REQUIRED_BANK, "index": index, "value": value.hex()}
            for index, value in sorted(pcrs.items())
        ],
        "x-tl-boot-apps": [
            {
                "component": component,
                "devicePath": app.device_path,
                "pcr": app.event.pcr,
                "digests": {bank: digest.hex() for bank, digest in sorted(app.event.digests.items())},
            }
            for app, component in zip(summary.boot_apps, components, strict=True)
        ],
        "x-tl-kernel-cmdline": summary.kernel_cmdline,
    }


class TokenIssuer:
    """Issues and verifies attestation tokens with the keys of `key_dir` (created on first use)."""

    def __init__(
        self,
        key_dir: Path,
        *,
        issuer: str,
        max_ttl: timedelta = MAX_TTL,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.key_dir = key_dir
        self.issuer = issuer
        self.max_ttl = max_ttl
        self.clock = clock
        self._cache: tuple[tuple[int, int, int], list[SigningKey]] | None = None  # manifest version, keys
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.key_dir / MANIFEST).exists():
            self._save([self._new_key()])

    def _new_key(self) -> SigningKey:
        private_key = ec.generate_private_key(ec.SECP256R1())
        kid = jwk_thumbprint(private_key.public_key())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.key_dir / f"{kid}.pem", pem)
        return SigningKey(kid, private_key, self.clock())

    def _save(self, keys: list[SigningKey]) -> None:
        manifest = [
            {
                "kid": key.kid,
                "createdAt": key.created_at.isoformat(),
                "retiredAt": None if key.retired_at is None else key.retired_at.isoformat(),
            }
            for key in keys
        ]
        _write_private(self.key_dir / MANIFEST, json.dumps({"keys": manifest}, indent=2).encode())

    def keys(self) -> list[SigningKey]:
        """Every stored key, the active one (not retired) last. Re-read only when the manifest changed
        (another process may rotate the keys), so issuing a token parses no key file."""
        stat = (self.key_dir / MANIFEST).stat()
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, self._read_keys())
        return list(self._cache[1])

    def _read_keys(self) -> list[SigningKey]:
        manifest = json.loads((self.key_dir / MANIFEST).read_text())
        keys = []
        for entry in manifest["keys"]:
            private_key = serialization.load_pem_private_key(
                (self.key_dir / f"{entry['kid']}.pem").read_bytes(), password=None
            )
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                raise TokenError(f"{self.key_dir}/{entry['kid']}.pem: not an EC private key")
            retired = entry["retiredAt"]
            keys.append(
                SigningKey(
                    entry["kid"],
                    private_key,
                    datetime.fromisoformat(entry["createdAt"]),
                    None if retired is None else datetime.fromisoformat(retired),
                )
            )
        return sorted(keys, key=lambda key: key.retired_at is None)

    def _published(self) -> list[SigningKey]:
        """Keys whose tokens may still be valid: the active key and keys retired less than max_ttl ago."""
        now = self.clock()
        return [key for key in self.keys() if key.retired_at is None or key.retired_at + self.max_ttl > now]

    @property
    def active_kid(self) -> str:
        """The key id new tokens are signed with."""
        return self.keys()[-1].kid

    def rotate(self) -> str:
        """Retire the active key (still published until its tokens expire) and make a new one; its kid."""
        now = self.clock()
        keys = [
            key if key.retired_at is not None else dataclasses.replace(key, retired_at=now)
            for key in self.keys()
        ]
        new_key = self._new_key()
        self._save([*keys, new_key])
        return new_key.kid

    def prune(self) -> list[str]:
        """Delete the retired keys whose every token has expired; the kids removed."""
        keep = self._published()
        kept = {key.kid for key in keep}
        removed = [key.kid for key in self.keys() if key.kid not in kept]
        self._save(keep)
        for kid in removed:
            (self.key_dir / f"{kid}.pem").unlink()
        return removed

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of every key a valid token may be signed with."""
        return {
            "keys": [
                {**public_jwk(key.private_key.public_key()), "kid": key.kid, "use": "sig", "alg": ALGORITHM}
                for key in self._published()
            ]
        }

    def openid_configuration(self, jwks_uri: str) -> dict[str, Any]:
        """An OpenID-style discovery document pointing relying parties at the JWKS."""
        return {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": [ALGORITHM],
        }

    def issue(
        self,
        result: AttestationResult,
        *,
        node: str,
        pool: str,
        image_version: str,
        ttl: timedelta | None = None,
        nonce: bytes | None = None,
    ) -> str:
        """A signed token for a passed attestation of `node`, valid for `ttl` (default: DEFAULT_TTL capped
        at max_ttl); raise TokenError for a failed result or a TTL outside (0, max_ttl]. `nonce` is the
        relying party's nonce, echoed in the `nonce` claim."""
        ttl = min(DEFAULT_TTL, self.max_ttl) if ttl is None else ttl
        if not timedelta(0) < ttl <= self.max_ttl:
            raise TokenError(f"token TTL {ttl} is outside (0, {self.max_ttl}]")
        claims = attestation_claims(result, node=node, pool=pool, image_version=image_version)
        now = self.clock()
        registered: dict[str, Any] = {
            "iss": self.issuer,
            "sub": node,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": str(uuid.uuid4()),
        }
        if nonce is not None:
            registered["nonce"] = nonce.hex()
        key = self.keys()[-1]
        return jwt.encode(registered | claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this issuer signed with a published key, unexpired; raise TokenError."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            keys = {key.kid: key for key in self._published()}
            if kid not in keys:
                raise TokenError(f"token key id {kid!r} is not one of this issuer's published keys")
            claims: dict[str, Any] = jwt.decode(
                token,
                keys[kid].private_key.public_key(),
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": list(REQUIRED_CLAIMS)},
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"attestation token rejected: {exc}") from None
        if claims.get("x-ms-attestation-type") != ATTESTATION_TYPE:
            raise TokenError("attestation token rejected: not an attestation token")
        return claims

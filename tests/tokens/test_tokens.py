"""Attestation tokens issued for real verdicts, verified as a relying party would: PyJWT and only the JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from attested_results import NONCE, QUOTED_PCRS, Verdicts

from trustedlaunch.attest.tokens import TokenError, TokenIssuer

ISSUER = "https://attest.example.test"


class MovableClock:
    """A wall clock the test sets (tokens issued "in the past" to test expiry)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class KeyNotPublishedError(Exception):
    """The token's kid names no key of the JWKS (the relying party's refusal)."""


def relying_party_decode(token: str, jwks_json: str) -> dict[str, Any]:
    """What a relying party does: pick the key by kid from the published JWKS, verify with PyJWT. A kid the
    JWKS does not publish is KeyNotPublishedError naming it (a token without a kid is a KeyError)."""
    key_set = jwt.PyJWKSet.from_json(jwks_json)
    kid = jwt.get_unverified_header(token)["kid"]
    if kid not in {key.key_id for key in key_set.keys}:
        raise KeyNotPublishedError(f"no published key has kid {kid}")
    key = key_set[kid]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["ES256"], issuer=ISSUER, options={"require": ["exp", "iat", "nbf", "sub"]}
    )
    return claims


def test_token_for_a_passed_attestation_verifies_with_the_published_jwks(
    verdicts: Verdicts, tmp_path: Path
) -> None:
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER)
    token = issuer.issue(
        verdicts.passed, node="aks-pool1-0", pool="pool1", image_version="2026.11.1", nonce=NONCE
    )
    claims = relying_party_decode(token, json.dumps(issuer.jwks()))

    assert claims["sub"] == "aks-pool1-0" and claims["iss"] == ISSUER
    assert claims["exp"] - claims["iat"] == 8 * 3600 and claims["nbf"] == claims["iat"]
    assert claims["x-ms-attestation-type"] == "azurevm" and claims["secureboot"] is True
    assert claims["x-tl-node-pool"] == "pool1" and claims["x-tl-image-version"] == "2026.11.1"
    assert claims["nonce"] == NONCE.hex()
    assert claims["x-ms-azurevm-attested-pcrs"] == sorted(QUOTED_PCRS)
    sha256 = verdicts.passed.replayed_pcrs["sha256"]
    assert claims["x-tl-pcrs"] == [
        {"bank": "sha256", "index": pcr, "value": sha256[pcr].hex()} for pcr in sorted(QUOTED_PCRS)
    ]
    assert verdicts.passed.summary is not None
    apps = verdicts.passed.summary.boot_apps
    assert [app["digests"]["sha256"] for app in claims["x-tl-boot-apps"]] == [
        app.digest().hex() for app in apps
    ]
    assert {app["pcr"] for app in claims["x-tl-boot-apps"]} == {4}
    assert claims["x-tl-kernel-cmdline"] == verdicts.passed.summary.kernel_cmdline
    assert issuer.verify(token) == claims


def test_key_is_persisted_private_and_named_by_its_rfc7638_thumbprint(
    verdicts: Verdicts, tmp_path: Path
) -> None:
    key_dir = tmp_path / "keys"
    first = TokenIssuer(key_dir, issuer=ISSUER)
    [key_file] = key_dir.glob("*.pem")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((key_dir / "keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    [jwk] = first.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    assert key_file.stem == jwk["kid"] == first.active_kid == thumbprint.decode()

    token = first.issue(verdicts.passed, node="n", pool="p", image_version="1")
    reopened = TokenIssuer(key_dir, issuer=ISSUER)
    assert reopened.jwks() == first.jwks()
    assert reopened.verify(token)["sub"] == "n"


def test_expired_token_is_rejected(verdicts: Verdicts, tmp_path: Path) -> None:
    clock = MovableClock()
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER, clock=clock)
    clock.now -= timedelta(hours=2)
    token = issuer.issue(verdicts.passed, node="n", pool="p", image_version="1", ttl=timedelta(hours=1))
    clock.now += timedelta(hours=2)
    with pytest.raises(jwt.ExpiredSignatureError):
        relying_party_decode(token, json.dumps(issuer.jwks()))
    with pytest.raises(TokenError, match="expired"):
        issuer.verify(token)


def test_ttl_is_bounded(verdicts: Verdicts, tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER, max_ttl=timedelta(hours=1))
    for ttl in (timedelta(0), timedelta(hours=2)):
        with pytest.raises(TokenError, match="TTL"):
            issuer.issue(verdicts.passed, node="n", pool="p", image_version="1", ttl=ttl)


@pytest.mark.parametrize("part", [1, 2])  # 1: the claims, 2: the signature
def test_tampered_token_is_rejected(verdicts: Verdicts, tmp_path: Path, part: int) -> None:
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER)
    token = issuer.issue(verdicts.passed, node="n", pool="p", image_version="1")
    parts = token.split(".")
    if part == 1:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        claims["secureboot"] = False
        claims["sub"] = "another-node"
        parts[1] = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    else:
        signature = bytearray(base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4)))
        signature[5] ^= 0x01
        parts[2] = base64.urlsafe_b64encode(bytes(signature)).rstrip(b"=").decode()
    tampered = ".".join(parts)
    with pytest.raises(jwt.InvalidSignatureError):
        relying_party_decode(tampered, json.dumps(issuer.jwks()))
    with pytest.raises(TokenError, match="Signature verification failed"):
        issuer.verify(tampered)


def test_token_signed_by_a_key_from_another_issuer_directory_is_rejected(
    verdicts: Verdicts, tmp_path: Path
) -> None:
    ours = TokenIssuer(tmp_path / "ours", issuer=ISSUER)
    theirs = TokenIssuer(tmp_path / "theirs", issuer=ISSUER)
    token = theirs.issue(verdicts.passed, node="n", pool="p", image_version="1")
    assert jwt.get_unverified_header(token)["kid"] == theirs.active_kid != ours.active_kid
    with pytest.raises(KeyNotPublishedError, match=f"kid {theirs.active_kid}$"):
        relying_party_decode(token, json.dumps(ours.jwks()))
    with pytest.raises(TokenError, match="not one of this issuer's published keys"):
        ours.verify(token)


def test_rotation_keeps_the_old_key_published_until_its_tokens_expired(
    verdicts: Verdicts, tmp_path: Path
) -> None:
    clock = MovableClock()
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER, max_ttl=timedelta(hours=1), clock=clock)
    old_kid = issuer.active_kid
    old_token = issuer.issue(verdicts.passed, node="n", pool="p", image_version="1", ttl=timedelta(hours=1))

    new_kid = issuer.rotate()
    assert new_kid != old_kid and issuer.active_kid == new_kid
    new_token = issuer.issue(verdicts.passed, node="n", pool="p", image_version="1")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert [key["kid"] for key in issuer.jwks()["keys"]] == [old_kid, new_kid]
    jwks_json = json.dumps(issuer.jwks())
    assert relying_party_decode(old_token, jwks_json)["sub"] == "n"
    assert relying_party_decode(new_token, jwks_json)["sub"] == "n"
    assert issuer.prune() == []

    clock.now += timedelta(hours=1, seconds=1)  # every token of the old key has expired
    assert [key["kid"] for key in issuer.jwks()["keys"]] == [new_kid]
    assert issuer.prune() == [old_kid]
    assert not (tmp_path / "keys" / f"{old_kid}.pem").exists()
    with pytest.raises(KeyNotPublishedError, match=f"kid {old_kid}$"):
        relying_party_decode(old_token, json.dumps(issuer.jwks()))
    with pytest.raises(TokenError, match="not one of this issuer's published keys"):
        issuer.verify(old_token)
    assert TokenIssuer(tmp_path / "keys", issuer=ISSUER).jwks() == issuer.jwks()


def test_failed_attestation_gets_no_token(verdicts: Verdicts, tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER)
    with pytest.raises(TokenError, match="node n1: attestation failed"):
        issuer.issue(verdicts.failed, node="n1", pool="p", image_version="1")


def test_token_of_another_issuer_name_is_rejected(verdicts: Verdicts, tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    token = TokenIssuer(key_dir, issuer="https://other.test").issue(
        verdicts.passed, node="n", pool="p", image_version="1"
    )
    with pytest.raises(TokenError, match="issuer"):
        TokenIssuer(key_dir, issuer=ISSUER).verify(token)

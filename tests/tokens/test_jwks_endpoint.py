"""The API publishes the attestation signing keys at the well-known URLs, without authentication, and
tokens verify with PyJWT from what it serves."""

from __future__ import annotations

from pathlib import Path

import jwt
from attested_results import Verdicts
from fastapi.testclient import TestClient

from trustedlaunch.api.app import create_app
from trustedlaunch.attest.tokens import TokenIssuer

ISSUER = "https://control.example.test"


def test_relying_party_verifies_a_token_with_the_served_jwks(verdicts: Verdicts, tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path / "keys", issuer=ISSUER)
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token", token_issuer=issuer)
    token = issuer.issue(verdicts.passed, node="aks-pool1-0", pool="pool1", image_version="2026.11.1")
    with TestClient(app) as client:  # no Authorization header: these URLs are public
        discovery = client.get("/.well-known/openid-configuration")
        assert discovery.status_code == 200
        assert discovery.json() == {
            "issuer": ISSUER,
            "jwks_uri": "http://testserver/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["ES256"],
        }
        served = client.get("/.well-known/jwks.json")
        assert served.status_code == 200
    assert served.json() == issuer.jwks()
    key = jwt.PyJWKSet.from_dict(served.json())[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key, algorithms=["ES256"], issuer=ISSUER)
    assert (claims["sub"], claims["x-tl-node-pool"], claims["secureboot"]) == ("aks-pool1-0", "pool1", True)


def test_default_keys_live_beside_the_admin_token(tmp_path: Path) -> None:
    with TestClient(
        create_app(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "cfg" / "admin-token")
    ) as client:
        [key] = client.get("/.well-known/jwks.json").json()["keys"]
    assert (tmp_path / "cfg" / "attestation-keys" / f"{key['kid']}.pem").is_file()

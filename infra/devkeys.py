"""Development token keys: an EC key made once (mode 0600, never committed), its public JWK set
for gateways, and tokens minted with it for the local cluster, the demo and the tests. In
production tokens come from the identity provider and gateways only hold its JWK set."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_AUDIENCE = "regiongate"
DEV_ISSUER = "https://dev.regiongate.local"
DEV_KID = "dev-1"


@dataclass(frozen=True, slots=True)
class DevKeys:
    private_key_file: Path
    jwks_file: Path

    def mint(self, subject: str, scope: str, *, lifetime_s: int = 3600, **claims) -> str:
        key = serialization.load_pem_private_key(self.private_key_file.read_bytes(), None)
        now = int(time.time())
        body = {
            "sub": subject,
            "aud": DEV_AUDIENCE,
            "iss": DEV_ISSUER,
            "iat": now,
            "exp": now + lifetime_s,
            "scope": scope,
            "client_id": subject,
            **claims,
        }
        return jwt.encode(body, key, algorithm="ES256", headers={"kid": DEV_KID})


def ensure_dev_keys(directory: Path) -> DevKeys:
    keys = DevKeys(directory / "dev-token-key.pem", directory / "jwks.json")
    if keys.private_key_file.exists() and keys.jwks_file.exists():
        return keys
    directory.mkdir(parents=True, exist_ok=True)
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(keys.private_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    keys.jwks_file.write_text(
        json.dumps({"keys": [public_jwk(private_key.public_key(), DEV_KID)]}, indent=2)
    )
    return keys


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict:
    """The JWK of an ES256 verification key. RFC 7518 (6.2.1.2) gives each coordinate the
    curve's full 32 bytes; PyJWT writes them so from 2.10 (pyproject.toml's floor), while 2.8
    and 2.9 dropped leading zero bytes, and then refused their own JWK of one key in 128."""
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    return {**public, "kid": kid, "use": "sig", "alg": "ES256"}

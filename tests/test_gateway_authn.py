"""Every way a bearer token can fail, sent through a real gateway: each is a 401 problem+json
with WWW-Authenticate, never a 500, and moves no money (the balances are read before and after).

The table covers what an attacker or a misconfigured client sends: a bad signature; a key the
gateway does not trust presented under a kid it does trust (RS256, PS256 and EdDSA against the
trusted EC key, which PyJWT answers with TypeError rather than InvalidTokenError); RS256 with
no kid; every algorithm name, asymmetric or not; a key of the wrong type; expired, not yet
valid, issued in the future; the wrong audience or issuer; each required claim missing; a kid
that is not a string; garbage and oversized tokens. A header longer than the server reads is a
431 problem+json, not aiohttp's text/plain.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth import TOKEN_LENGTH_MAX
from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER, DEV_KID
from tests.support import unique

P = "urn:regiongate:problem:"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    body = {
        "sub": "mallory",
        "aud": DEV_AUDIENCE,
        "iss": DEV_ISSUER,
        "iat": now,
        "exp": now + 300,
        "scope": "admin",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def forged(header: dict, body: dict | None = None, signature: bytes = b"not-a-signature") -> str:
    """A token with any header at all and a signature nobody made."""
    return ".".join(
        (
            _b64(json.dumps(header).encode()),
            _b64(json.dumps(body or claims()).encode()),
            _b64(signature),
        )
    )


def signed(key, algorithm: str, kid: str | None = DEV_KID, **overrides) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=headers)


def failure_modes(dev_key) -> dict[str, str]:
    """Name -> the Authorization header's value (after 'Bearer ' where it is a token)."""
    now = int(time.time())
    modes = {
        "bad signature": signed(EC_KEY, "ES256"),
        "untrusted RSA key under the trusted kid, RS256": signed(RSA_KEY, "RS256"),
        "untrusted RSA key under the trusted kid, PS256": signed(RSA_KEY, "PS256"),
        "untrusted Ed25519 key under the trusted kid, EdDSA": signed(ED_KEY, "EdDSA"),
        "RS256 with no kid": signed(RSA_KEY, "RS256", kid=None),
        "ES384 key and algorithm": signed(EC384_KEY, "ES384"),
        "wrong key type: EdDSA header over the EC key's signature": forged(
            {"alg": "EdDSA", "kid": DEV_KID}
        ),
        "alg none": jwt.encode(claims(), None, algorithm="none"),
        "HS256 with the public key as secret": forged({"alg": "HS256", "kid": DEV_KID}),
        "expired": signed(dev_key, "ES256", exp=now - 600, iat=now - 900),
        "not yet valid": signed(dev_key, "ES256", nbf=now + 600),
        "issued in the future": signed(dev_key, "ES256", iat=now + 600),
        "wrong aud": signed(dev_key, "ES256", aud="someone-else"),
        "wrong iss": signed(dev_key, "ES256", iss="https://evil.test"),
        "kid is not a string": forged({"alg": "ES256", "kid": ["dev-1"]}),
        "unknown kid": signed(dev_key, "ES256", kid="dev-9"),
        "garbage": "not.a.jwt",
        "header is not JSON": _b64(b"{nope") + ".e30.c2ln",
        "oversized": "a" * (TOKEN_LENGTH_MAX + 1),
    }
    for algorithm in ("HS384", "HS512", "RS384", "RS512", "PS384", "PS512", "ES512", "ES256K"):
        modes[f"alg {algorithm}"] = forged({"alg": algorithm, "kid": DEV_KID})
    for claim in ("exp", "iat", "sub", "aud", "iss"):
        modes[f"missing {claim}"] = signed(dev_key, "ES256", **{claim: None})
    return {name: "Bearer " + token for name, token in modes.items()}


@pytest.fixture
def dev_key(cluster):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(cluster.keys.private_key_file.read_bytes(), None)


async def test_every_authentication_failure_is_a_401_problem_and_moves_nothing(cluster, dev_key):
    alice = await cluster.account("eu", fund=100)
    before = {
        account: (
            await cluster.call("eu", "GET", f"/v1/accounts/{account}/balance", token=cluster.admin)
        )[2]
        for account in (alice, "eu-clearing-EUR")
    }
    extra = {"no header": None, "basic scheme": "Basic dXNlcjpwYXNz", "empty bearer": "Bearer "}
    modes = {**failure_modes(dev_key), **extra}
    for name, authorization in modes.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        for gateway in ("eu", "us"):
            status, answer_headers, problem = await cluster.call(
                gateway,
                "POST",
                "/v1/transfers",
                key=unique(),
                headers=headers,
                body={
                    "debit_account_id": alice,
                    "credit_account_id": "eu-clearing-EUR",
                    "amount": 1,
                    "currency": "EUR",
                },
            )
            assert status == 401, (name, problem)
            assert answer_headers["Content-Type"].startswith("application/problem+json"), name
            assert problem["type"] == P + "unauthenticated", (name, problem)
            assert answer_headers["WWW-Authenticate"].startswith("Bearer"), name
    after = {
        account: (
            await cluster.call("eu", "GET", f"/v1/accounts/{account}/balance", token=cluster.admin)
        )[2]
        for account in before
    }
    assert after == before


async def test_a_header_past_the_servers_limit_is_a_431_problem(cluster):
    status, headers, problem = await cluster.call(
        "eu",
        "GET",
        "/v1/accounts/eu-house-EUR/balance",
        headers={"Authorization": "Bearer " + "a" * 20_000},
    )
    assert status == 431, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["type"] == P + "headers-too-large"

"""Bearer authentication and scopes: each case of the issue's list (no token, expired, wrong
signature, wrong audience, alg none, a player on another player's account, a game server
outside its operator's players) and the ones an attacker tries next (HMAC with the public key,
unknown key, missing claims) is refused with a reason; keys rotate through the JWK set file."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import AuthConfig, Authenticator, Scope
from gateway.errors import Forbidden, Unauthenticated
from infra.devkeys import public_jwk
from tests.support import assert_eventually

AUDIENCE = "regiongate"
ISSUER = "https://auth.example.test"


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def jwk(private_key, kid: str) -> dict:
    return public_jwk(private_key.public_key(), kid)


def token(private_key, kid: str | None = "k1", **overrides) -> str:
    now = int(time.time())
    claims = {
        "sub": "player-1",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 300,
        "scope": "wallet",
        "accounts": ["eu-a"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, private_key, algorithm="ES256", headers={"kid": kid} if kid else None)


@pytest.fixture
def keys(tmp_path):
    key = new_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(key, "k1")]}))
    auth = Authenticator(AuthConfig(str(path), AUDIENCE, ISSUER, reload_check_interval_s=0))
    return key, path, auth


def test_a_valid_token_gives_its_principal(keys):
    key, _, auth = keys
    principal = auth.authenticate("Bearer " + token(key))
    assert principal.subject == "player-1"
    assert principal.scopes == {Scope.WALLET}
    assert principal.may_use_wallet("eu-a") and not principal.may_use_wallet("eu-b")


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no header", "missing"),
        ("basic scheme", "Bearer"),
        ("garbage", "malformed"),
        ("expired", "expired"),
        ("not yet valid", "invalid token"),
        ("wrong signature", "invalid token"),
        ("unknown kid", "unknown key"),
        ("wrong audience", "audience"),
        ("wrong issuer", "issuer"),
        ("a part of the issuer", "issuer"),
        ("alg none", "not accepted"),
        ("hmac with the public key", "not accepted"),
        ("missing exp", "invalid token"),
        ("missing sub", "invalid token"),
    ],
)
def test_bad_tokens_are_refused(keys, case, reason):
    key, _, auth = keys
    now = int(time.time())
    header = {
        "no header": None,
        "basic scheme": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not.a.jwt",
        "expired": "Bearer " + token(key, exp=now - 120),
        "not yet valid": "Bearer " + token(key, nbf=now + 600),
        "wrong signature": "Bearer " + token(new_key()),
        "unknown kid": "Bearer " + token(key, kid="k9"),
        "wrong audience": "Bearer " + token(key, aud="someone-else"),
        "wrong issuer": "Bearer " + token(key, iss="https://evil.test"),
        # PyJWT 2.10.0 matched a string issuer as a substring (CVE-2024-53861).
        "a part of the issuer": "Bearer " + token(key, iss="auth.example"),
        "alg none": "Bearer "
        + jwt.encode(
            {"sub": "x", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 60, "iat": now},
            None,
            algorithm="none",
        ),
        "hmac with the public key": "Bearer "
        + jwt.api_jws.PyJWS().encode(
            json.dumps(
                {"sub": "x", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 60, "iat": now}
            ).encode(),
            b"k" * 32,
            algorithm="HS256",
            headers={"kid": "k1"},
        ),
        "missing exp": "Bearer " + token(key, exp=None),
        "missing sub": "Bearer " + token(key, sub=None),
    }[case]
    with pytest.raises(Unauthenticated, match=reason):
        auth.authenticate(header)


def test_scopes_separate_players_game_servers_and_admins(keys):
    key, _, auth = keys
    player = auth.authenticate("Bearer " + token(key))
    game = auth.authenticate(
        "Bearer " + token(key, sub="gs-1", scope="game:server", operator="op-1", accounts=None)
    )
    admin = auth.authenticate("Bearer " + token(key, sub="bo", scope="admin", accounts=None))
    assert not player.may_play_for("op-1")
    with pytest.raises(Forbidden):
        player.require(Scope.ADMIN)
    assert game.may_play_for("op-1") and not game.may_play_for("op-2")
    assert not game.may_play_for(None)
    assert not game.may_use_wallet("eu-a")
    assert admin.may_use_wallet("eu-anything") and admin.may_play_for("op-9")


def test_keys_rotate_through_the_key_set_file(keys):
    old, path, auth = keys
    new = new_key()
    old_token = token(old, kid="k1")
    path.write_text(json.dumps({"keys": [jwk(old, "k1"), jwk(new, "k2")]}))
    assert auth.authenticate("Bearer " + token(new, kid="k2")).subject == "player-1"
    assert auth.authenticate("Bearer " + old_token).subject == "player-1"
    path.write_text(json.dumps({"keys": [jwk(new, "k2")]}))
    with pytest.raises(Unauthenticated, match="unknown key"):
        auth.authenticate("Bearer " + old_token)
    path.write_text("{ half written")
    assert auth.authenticate("Bearer " + token(new, kid="k2")).subject == "player-1"


KEYS_TRIED_MAX = 10_000  # one key in 128 has a coordinate below 2**248: none in 10,000 is 1e-34


def test_a_key_whose_coordinate_starts_with_a_zero_byte_loads(tmp_path):
    """The JWK of such a key keeps the coordinate's full 32 bytes, so the gateway accepts it.
    PyJWT before 2.10 dropped the zero byte and refused the result ("Coords should be 32 bytes
    for curve P-256"): one `./dev up` in 128 would have made dev keys that no gateway loads."""
    for _ in range(KEYS_TRIED_MAX):
        key = new_key()
        numbers = key.public_key().public_numbers()
        if min(numbers.x, numbers.y) < 2**248:
            break
    else:
        pytest.fail(f"no key with a short coordinate in {KEYS_TRIED_MAX}")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(key, "k1")]}))
    auth = Authenticator(AuthConfig(str(path), AUDIENCE, ISSUER, reload_check_interval_s=0))
    assert auth.authenticate("Bearer " + token(key)).subject == "player-1"


async def test_a_cached_token_still_expires(tmp_path):
    key = new_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(key, "k1")]}))
    auth = Authenticator(
        AuthConfig(str(path), AUDIENCE, ISSUER, leeway_s=0, reload_check_interval_s=0)
    )
    # Three seconds: long enough that a loaded machine still verifies it once before it
    # expires, short enough to wait out.
    short = "Bearer " + token(key, exp=int(time.time()) + 3)
    assert auth.authenticate(short).subject == "player-1"
    assert auth.authenticate(short).subject == "player-1"  # from the cache

    async def refused() -> bool:
        try:
            auth.authenticate(short)
        except Unauthenticated:
            return True
        return False

    await assert_eventually(refused, timeout_s=10)

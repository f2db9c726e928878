"""Bearer-token authentication and the scopes that authorise a caller.

Tokens are JWTs signed with asymmetric keys only (RS256, PS256, ES256, EdDSA): a gateway holds
public keys and can verify but never mint. Keys come from a JWK set, in a file that is re-read
when it changes, so keys rotate without a restart: publish the new key, sign with it, and
remove the old key once no live token uses it. A token must name a known ``kid`` when the set
holds more than one key. ``alg: none`` and HMAC algorithms are refused, which also closes the
"public key used as an HMAC secret" confusion.

Scopes (the ``scope`` claim, space separated, as RFC 8693):
- ``wallet``: a player acting on its own accounts (the ``accounts`` claim lists them);
- ``game:server``: a game server betting, winning and rolling back for the players of its
  operator (the ``operator`` claim);
- ``admin``: operators' back office, which may create accounts and players for others.

A player's token may also name its public id (the ``player`` claim): it may then change its
own username.
"""

from __future__ import annotations

import collections
import enum
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from gateway.errors import Forbidden, Unauthenticated
from wire.ids import is_system_account_id

ALLOWED_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
# Which algorithms a key of each JWK type verifies. A token's ``alg`` must fit the key its
# ``kid`` names: handing PyJWT an EC key for an RS256 token raises TypeError, not
# InvalidTokenError, and a caller must never turn a bad token into a 500.
ALGORITHMS_BY_KEY_TYPE = {"RSA": ("RS256", "PS256"), "EC": ("ES256",), "OKP": ("EdDSA",)}
TOKEN_LENGTH_MAX = 8192
ACCOUNTS_CLAIM_MAX = 1000


class Scope(enum.StrEnum):
    WALLET = "wallet"
    GAME_SERVER = "game:server"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    client_id: str
    scopes: frozenset[Scope]
    accounts: frozenset[str]
    """For a player: the accounts it owns."""
    operator: str | None
    """For a game server: the operator whose players it may act for."""
    home_region: str | None = None
    """The client's configured home (the ``home_region`` claim): where its creations go when
    the request names no region."""
    player: str | None = None
    """For a player: its own public id (the ``player`` claim), whose username it may change."""

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this needs the {scope.value} scope")

    def may_use_wallet(self, account_id: str) -> bool:
        """A player's own accounts, never a system account, whatever its token lists."""
        return Scope.ADMIN in self.scopes or (
            Scope.WALLET in self.scopes
            and account_id in self.accounts
            and not is_system_account_id(account_id)
        )

    def may_play_for(self, account_operator: str | None) -> bool:
        """A game server acts only for players of its own operator."""
        return Scope.ADMIN in self.scopes or (
            Scope.GAME_SERVER in self.scopes
            and self.operator is not None
            and account_operator == self.operator
        )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwks_file: str
    audience: str
    issuer: str
    leeway_s: int = 30
    """Clock skew tolerated on exp, nbf and iat."""
    reload_check_interval_s: float = 1.0


class KeySet:
    """The JWK set from a file, re-read when its modification time or size changes."""

    def __init__(self, path: str | Path, check_interval_s: float = 1.0) -> None:
        self._path = Path(path)
        self._check_interval_s = check_interval_s
        self._checked_at = 0.0
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, tuple[jwt.PyJWK, tuple[str, ...]]] = {}
        self.version = 0
        """Grows on every reload: cached verifications made under older keys are void."""
        self._load()

    def _load(self) -> None:
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        document = json.loads(self._path.read_text())
        keys = {}
        for index, raw in enumerate(document.get("keys", [])):
            if raw.get("kty") == "oct":
                continue  # a shared secret never verifies a caller here
            key = jwt.PyJWK.from_dict(raw)
            algorithms = ALGORITHMS_BY_KEY_TYPE.get(key.key_type, ())
            if raw.get("alg") is not None:  # a key that names its algorithm verifies only it
                algorithms = tuple(a for a in algorithms if a == raw["alg"])
            if key.key_type == "EC" and raw.get("crv") != "P-256":
                algorithms = ()  # ES256 is P-256 only (RFC 7518, 3.4)
            keys[raw.get("kid") or f"#{index}"] = (key, algorithms)
        if not keys:
            raise ValueError(f"JWK set {self._path} has no asymmetric keys")
        self._keys = keys
        self._stamp = stamp
        self.version += 1

    def refresh(self) -> None:
        """Re-read the file if it changed, at most once per check interval."""
        now = time.monotonic()
        if now - self._checked_at >= self._check_interval_s:
            self._checked_at = now
            try:
                self._load()
            except (OSError, ValueError, jwt.PyJWKError):
                pass  # keep the last good set; a half-written file must not lock everyone out

    def get(self, kid: str | None) -> tuple[jwt.PyJWK, tuple[str, ...]] | None:
        """The key a kid names with the algorithms it verifies (None: no such key)."""
        self.refresh()
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    expires_at: float
    key_set_version: int


class Authenticator:
    """Verifies bearer tokens, remembering the ones it verified.

    Signature checks were 29% of the gateway's CPU (measured with py-spy under
    bench_gateway), and a client sends the same token with many requests. A cached
    verification is used only for the identical token string, only until its exp (plus the
    same leeway), and only while the key set is the one it was verified under: rotating a key
    out revokes its tokens at once. The cache is bounded, least recently used out first."""

    def __init__(self, config: AuthConfig, cache_size_max: int = 10_000) -> None:
        if not 0 <= cache_size_max <= 1_000_000:
            raise ValueError(f"cache_size_max must be in [0, 1000000], got {cache_size_max}")
        self._config = config
        self._keys = KeySet(config.jwks_file, config.reload_check_interval_s)
        self._cache: collections.OrderedDict[str, _Verified] = collections.OrderedDict()
        self._cache_size_max = cache_size_max

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an Authorization header, or Unauthenticated saying why."""
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected 'Authorization: Bearer <token>'")
        if len(token) > TOKEN_LENGTH_MAX:
            raise Unauthenticated(f"token longer than {TOKEN_LENGTH_MAX} characters")
        self._keys.refresh()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.key_set_version == self._keys.version and time.time() < cached.expires_at:
                self._cache.move_to_end(token)
                return cached.principal
            del self._cache[token]
        principal, expires_at = self._verify(token)
        if self._cache_size_max:
            self._cache[token] = _Verified(principal, expires_at, self._keys.version)
            if len(self._cache) > self._cache_size_max:
                self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed token") from exc
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("token kid must be a string")
        found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated("token signed with an unknown key")
        key, algorithms = found
        if header["alg"] not in algorithms:
            raise Unauthenticated(f"token algorithm {header['alg']} does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[header["alg"]],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("token from an unknown issuer") from exc
        except (jwt.InvalidTokenError, jwt.PyJWKError, TypeError, ValueError) as exc:
            # Whatever a library raises for a token it cannot verify, the caller is refused:
            # a token is input, and input never answers 500.
            raise Unauthenticated(f"invalid token: {type(exc).__name__}") from exc
        return _principal(claims), float(claims["exp"]) + self._config.leeway_s


def _principal(claims: dict) -> Principal:
    scopes = set()
    for name in str(claims.get("scope", "")).split():
        try:
            scopes.add(Scope(name))
        except ValueError:
            continue  # scopes of other services are none of ours
    accounts = claims.get("accounts", [])
    if not isinstance(accounts, list) or len(accounts) > ACCOUNTS_CLAIM_MAX:
        raise Unauthenticated(f"accounts claim must be a list of at most {ACCOUNTS_CLAIM_MAX}")
    operator = claims.get("operator")
    home_region = claims.get("home_region")
    player = claims.get("player")
    return Principal(
        subject=str(claims["sub"]),
        client_id=str(claims.get("client_id") or claims.get("azp") or claims["sub"]),
        scopes=frozenset(scopes),
        accounts=frozenset(str(a) for a in accounts),
        operator=str(operator) if operator is not None else None,
        home_region=home_region if isinstance(home_region, str) else None,
        player=player if isinstance(player, str) else None,
    )

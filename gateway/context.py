"""What every public route shares: the gateway's parts (authenticator, directory, router to
the regions' nodes, rate limiter), built once per process, and the steps every handler takes
(who is calling, its idempotency key, its JSON body, passing a node's answer through)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re

import msgspec
from aiohttp import web

from gateway.auth import AuthConfig, Authenticator, Principal
from gateway.config import GatewayConfig
from gateway.errors import Unauthenticated
from gateway.observability import POOL_WAIT_SECONDS
from gateway.ratelimit import Limit, RateLimiter, limiter_redis
from region_router.backends import build_directory
from region_router.directory import Directory
from region_router.errors import RouterError
from region_router.http_pool import HttpPool
from region_router.ledger_client import LedgerResponse
from region_router.router import RegionRouter, RouterConfig
from runtime.telemetry import CLIENT_ID
from wire.ids import identity_slot
from wire.problems import REPLAYED_HEADER, ProblemError
from wire.results import (
    ACCOUNT_NOT_FOUND,
    IDENTITY_UNAVAILABLE,
    MALFORMED_JSON,
    PLAYER_NOT_FOUND,
    VALIDATION_FAILED,
)
from wire.service_auth import ServiceKeyring

CLIENT_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:~-]{1,100}$")
_decode = msgspec.json.Decoder(dict)
log = logging.getLogger("regiongate.gateway")


class Gateway:
    """Everything a request handler needs, built once per process."""

    def __init__(self, config: GatewayConfig, directory: Directory | None = None) -> None:
        self.config = config
        self.authenticator = Authenticator(
            AuthConfig(config.jwks_file, config.audience, config.issuer)
        )
        self.directory = directory or build_directory(config.directory_file, config.consul)
        self.key = ServiceKeyring.load(config.service_keys_file).signing_key
        self.pool: HttpPool | None = None
        self.router: RegionRouter | None = None
        self.limiter: RateLimiter | None = None
        self._redis = None
        self._operators: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self.lookup_limiter: RateLimiter | None = None
        self._player_homes: collections.OrderedDict[str, str] = collections.OrderedDict()

    async def start(self) -> None:
        await self.directory.start()
        self.pool = HttpPool(connections_per_origin_max=128, on_pool_wait=POOL_WAIT_SECONDS.observe)
        self.router = RegionRouter(
            directory=self.directory,
            key=self.key,
            pool=self.pool,
            config=RouterConfig(
                local_region=self.config.region,
                attempt_timeout_ms=self.config.attempt_timeout_ms,
                call_timeout_ms=self.config.call_timeout_ms,
                retries_max=self.config.retries_max,
            ),
        )
        limits = self.config.rate_limit
        self._redis = limiter_redis(self.config.redis_url, limits.timeout_ms)
        self.limiter = RateLimiter(
            self._redis,
            per_client=Limit(limits.per_client_rate_per_s, limits.per_client_burst),
            per_account=Limit(limits.per_account_rate_per_s, limits.per_account_burst),
            timeout_ms=limits.timeout_ms,
            key_prefix=limits.key_prefix,
        )
        self.lookup_limiter = RateLimiter(
            self._redis,
            per_client=Limit(limits.lookup_rate_per_s, limits.lookup_burst),
            per_account=Limit(limits.lookup_rate_per_s, limits.lookup_burst),
            timeout_ms=limits.timeout_ms,
            key_prefix=limits.key_prefix + "lookup:",
        )

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self._redis is not None:
            await self._redis.aclose()
        await self.directory.stop()

    async def operator_of(self, account_id: str) -> str | None:
        """The operator an account belongs to (its metadata), cached: it never changes."""
        if account_id in self._operators:
            self._operators.move_to_end(account_id)
            return self._operators[account_id]
        response = await self.router.call(account_id, "GET", f"/v1/accounts/{account_id}")
        if response.status == 404:
            raise ProblemError(ACCOUNT_NOT_FOUND)
        if response.status != 200:
            return None
        operator = (response.json().get("metadata") or {}).get("operator")
        self._operators[account_id] = operator
        if len(self._operators) > self.config.operator_cache_size_max:
            self._operators.popitem(last=False)
        return operator

    async def home_of_player(self, player_id: str) -> str:
        """A player's home region, asked of the owner of its id's slot once and remembered
        (a player's home never changes; its id says nothing of it)."""
        home = self._player_homes.get(player_id)
        if home is not None:
            self._player_homes.move_to_end(player_id)
            return home
        owner = self.directory.snapshot().slot_owner(identity_slot(player_id))
        if owner is None:
            raise ProblemError(IDENTITY_UNAVAILABLE, "the directory assigns no identity slots")
        response = await self.router.call_in_region(
            owner, "GET", f"/v1/identity/locate/{player_id}"
        )
        if response.status == 200:
            home = response.json()["home_region"]
        elif response.status == 404:
            # Not recorded there yet: a player created through another gateway a moment ago
            # (its id is recorded right after its name is confirmed). Ask every region whether
            # the player is its own, at once: one round trip, for this rare miss only.
            home = await self._find_home(player_id)
        else:
            raise ProblemError(IDENTITY_UNAVAILABLE, f"the id's owner answered {response.status}")
        if home is None:
            raise ProblemError(PLAYER_NOT_FOUND)
        self.remember_home(player_id, home)
        return home

    async def _find_home(self, player_id: str) -> str | None:
        regions = list(self.directory.snapshot().regions)

        async def ask(region: str) -> str | None:
            try:
                answer = await self.router.call_in_region(
                    region, "GET", f"/v1/identity/players/{player_id}"
                )
            except (RouterError, TimeoutError):
                return None
            return region if answer.status == 200 else None

        found = [home for home in await asyncio.gather(*map(ask, regions)) if home]
        return found[0] if found else None

    def remember_home(self, player_id: str, home: str) -> None:
        self._player_homes[player_id] = home
        if len(self._player_homes) > self.config.player_cache_size_max:
            self._player_homes.popitem(last=False)


GATEWAY = web.AppKey("gateway", Gateway)


def creation_region(gateway: Gateway, principal: Principal, requested: str | None, what: str):
    """Where an account or a player is created: the request's region, else the client's
    configured home, else the directory's one default region; never the gateway it entered
    by, so a retry through any gateway reaches the same key (docs/decisions/0001)."""
    snapshot = gateway.directory.snapshot()
    region = requested or principal.home_region or snapshot.default_region
    if region is None:
        raise ProblemError(
            VALIDATION_FAILED,
            f"name the {what}'s region: the directory sets no default_region",
            field="region",
        )
    if region not in snapshot.regions:
        raise ProblemError(VALIDATION_FAILED, "unknown region", field="region")
    return region


def principal_of(request: web.Request) -> Principal:
    try:
        principal = request.app[GATEWAY].authenticator.authenticate(
            request.headers.get("Authorization")
        )
    except Unauthenticated as exc:
        # Once, at info level, with the reason and never the token: a bad token is a caller's
        # mistake (or a probe), not the gateway's fault.
        log.info("unauthenticated %s %s: %s", request.method, request.path, exc)
        raise
    request[CLIENT_ID] = principal.client_id  # the access line's caller
    return principal


def ledger_key(request: web.Request, principal: Principal) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ProblemError(
            VALIDATION_FAILED, "Idempotency-Key header is required", field="Idempotency-Key"
        )
    if not CLIENT_KEY_PATTERN.match(key):
        raise ProblemError(
            VALIDATION_FAILED,
            "1 to 100 characters of A-Z a-z 0-9 . _ : ~ -",
            field="Idempotency-Key",
        )
    client_tag = hashlib.sha256(principal.client_id.encode()).hexdigest()[:16]
    return f"{client_tag}.{key}"


async def json_body(request: web.Request) -> dict:
    try:
        return _decode.decode(await request.read())
    except msgspec.ValidationError as exc:
        raise ProblemError(VALIDATION_FAILED, "body must be a JSON object") from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(MALFORMED_JSON, str(exc)) from exc


def pass_through(response: LedgerResponse) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if response.replayed else {}
    location = response.headers.get("Location")
    if location is not None and location.startswith(("/v1/transfers/", "/v1/players/")):
        headers["Location"] = location  # the node's paths for these are the public ones
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None and retry_after.isdigit():
        headers["Retry-After"] = retry_after  # a ledger's 503 says when to come back
    content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
    return web.Response(
        status=response.status, body=response.body, content_type=content_type, headers=headers
    )

"""The public gateway: authenticate the caller, authorise it for the account, rate-limit, and
forward to the account's home-region ledger through the region router. Ledger answers (money
results and problem documents alike) are passed through unchanged, including the replay header.

Who may do what:
- a player (``wallet``) reads its own accounts and moves money out of them;
- a game server (``game:server``) bets, wins and rolls back for its operator's players, and reads
  their balances;
- the back office (``admin``) does all of that for anyone, and creates accounts.

Idempotency keys are namespaced by client before they reach the ledger, so two clients can never
collide on a key, nor replay each other's answers.

Over 400 lines: every route of the public API in one place, so that the authorisation
rules, which a reviewer reads together, stay together.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import urllib.parse

import msgspec
from aiohttp import web
from opentelemetry import trace

from gateway.auth import AuthConfig, Authenticator, Principal, Scope
from gateway.config import GatewayConfig
from gateway.errors import Forbidden, Unauthenticated
from gateway.observability import HOME_REGION, POOL_WAIT_SECONDS, telemetry_middleware
from gateway.openapi import AccountCreateIn, openapi_document
from gateway.problems import translate
from gateway.ratelimit import Limit, RateLimiter, limiter_redis
from region_router.backends import build_directory
from region_router.directory import Directory
from region_router.http_pool import HttpPool
from region_router.ledger_client import LedgerResponse
from region_router.router import RegionRouter, RouterConfig
from runtime.http_problems import problem_middleware
from runtime.telemetry import CLIENT_ID
from wire.ids import is_system_account_id, region_of
from wire.problems import REPLAYED_HEADER, ProblemError
from wire.results import ACCOUNT_NOT_FOUND, MALFORMED_JSON, TRANSFER_NOT_FOUND, VALIDATION_FAILED
from wire.schemas import decode
from wire.service_auth import ServiceKeyring

HEADER_SIZE_BYTES_MAX = 16_384
"""Longest header line; past it, 431 headers-too-large (aiohttp's default is 8,190)."""
CLIENT_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:~-]{1,100}$")
FORWARDED_QUERY = ("as_of", "limit", "cursor", "order")
_decode = msgspec.json.Decoder(dict)
ACCOUNT_CREATE = msgspec.json.Decoder(AccountCreateIn)
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


GATEWAY = web.AppKey("gateway", Gateway)


def _principal(request: web.Request) -> Principal:
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


def _ledger_key(request: web.Request, principal: Principal) -> str:
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


async def _json_body(request: web.Request) -> dict:
    try:
        return _decode.decode(await request.read())
    except msgspec.ValidationError as exc:
        raise ProblemError(VALIDATION_FAILED, "body must be a JSON object") from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(MALFORMED_JSON, str(exc)) from exc


def _account_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or region_of(value) is None:
        raise ProblemError(VALIDATION_FAILED, f"{name} must be an account id", field=name)
    return value


def _limited_account(debit: str, credit: str) -> str:
    """The account whose per-account limit a transfer spends: the player's side. A system
    account takes part in every deposit (clearing) or bet (house) of its region, so a limit on
    it would cap the region, which the ledger's batching is built to serve."""
    return credit if is_system_account_id(debit) and not is_system_account_id(credit) else debit


def _pass_through(response: LedgerResponse) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if response.replayed else {}
    location = response.headers.get("Location")
    if location is not None and location.startswith("/v1/transfers/"):
        headers["Location"] = location  # the ledger's paths for transfers are the public ones
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None and retry_after.isdigit():
        headers["Retry-After"] = retry_after  # a ledger's 503 says when to come back
    content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
    return web.Response(
        status=response.status, body=response.body, content_type=content_type, headers=headers
    )


def _note_home(request: web.Request, account_id: str) -> None:
    region = request.app[GATEWAY].directory.snapshot().home_region(account_id)
    if region is not None:
        request[HOME_REGION] = region  # the latency metric's label
        trace.get_current_span().set_attribute("regiongate.home_region", region)


async def _authorize_read(request: web.Request, principal: Principal, account_id: str) -> None:
    if principal.may_use_wallet(account_id):
        return
    if Scope.GAME_SERVER in principal.scopes and principal.may_play_for(
        await request.app[GATEWAY].operator_of(account_id)
    ):
        return
    raise Forbidden("this account is not yours")


async def read_account(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    account_id = request.match_info["account_id"]
    if region_of(account_id) is None:
        raise ProblemError(ACCOUNT_NOT_FOUND)
    _note_home(request, account_id)
    # The caller's own budget first; the account's only once the caller may read it, so that
    # a refused caller cannot use up another account's limit.
    await gateway.limiter.check(principal.client_id)
    await _authorize_read(request, principal, account_id)
    await gateway.limiter.check(None, account_id)
    suffix = request.match_info.get("suffix") or ""
    query = {k: v for k, v in request.query.items() if k in FORWARDED_QUERY}
    path = f"/v1/accounts/{account_id}{suffix}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    response = await gateway.router.call(account_id, "GET", path)
    return _pass_through(response)


async def create_account(request: web.Request) -> web.Response:
    """The region comes from the request (the body's ``region``), else from the client's
    configured home (its token's ``home_region``), else from the directory's one
    ``default_region``: never from the gateway it entered by, so a retry through any gateway
    reaches the same ledger and its idempotency key (docs/decisions/0001)."""
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    principal.require(Scope.ADMIN)
    await gateway.limiter.check(principal.client_id)
    key = _ledger_key(request, principal)
    created: AccountCreateIn = decode(ACCOUNT_CREATE, await request.read())
    snapshot = gateway.directory.snapshot()
    region = created.region or principal.home_region or snapshot.default_region
    metadata = dict(created.metadata or {})
    if created.operator is not None:
        metadata["operator"] = created.operator
    body = {"currency": created.currency, "metadata": metadata or None}
    if region is None:
        raise ProblemError(
            VALIDATION_FAILED,
            "name the account's region: the directory sets no default_region",
            field="region",
        )
    if region not in snapshot.regions:
        raise ProblemError(VALIDATION_FAILED, "unknown region", field="region")
    response = await gateway.router.call_in_region(
        region,
        "POST",
        "/v1/accounts",
        body,
        idempotency_key=key,
    )
    return _pass_through(response)


async def set_account_status(request: web.Request) -> web.Response:
    """Freeze, unfreeze or close an account: the back office's decision (fraud, responsible
    gaming, a player leaving), so admin only. Setting the status an account already has is
    answered as a success, so a retry needs no idempotency key."""
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    principal.require(Scope.ADMIN)
    account_id = request.match_info["account_id"]
    if region_of(account_id) is None:
        raise ProblemError(ACCOUNT_NOT_FOUND)
    _note_home(request, account_id)
    await gateway.limiter.check(principal.client_id, account_id)
    body = await _json_body(request)
    response = await gateway.router.call(
        account_id, "POST", f"/v1/accounts/{account_id}/status", body
    )
    return _pass_through(response)


async def create_transfer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    body = await _json_body(request)
    debit = _account_field(body, "debit_account_id")
    credit = _account_field(body, "credit_account_id")
    _note_home(request, debit)
    await gateway.limiter.check(principal.client_id)
    if not principal.may_use_wallet(debit):
        raise Forbidden("money can only leave your own accounts")
    await gateway.limiter.check(None, _limited_account(debit, credit))
    key = _ledger_key(request, principal)
    snapshot = gateway.directory.snapshot()
    # Across regions, the debit side's ledger orchestrates the saga (docs/architecture.md): one
    # call to it, which answers the final result, or 202 and the transfer's URL if it runs on.
    cross_region = snapshot.home_region(debit) != snapshot.home_region(credit)
    response = await gateway.router.call(
        debit,
        "POST",
        "/v1/sagas" if cross_region else "/v1/transfers",
        body,
        idempotency_key=key,
    )
    return _pass_through(response)


async def _transfer_for(request: web.Request, principal: Principal) -> dict:
    """A transfer the caller may see; 404 for one it may not (its existence is not leaked)."""
    gateway = request.app[GATEWAY]
    transfer_id = request.match_info["transfer_id"]
    if region_of(transfer_id) is None:
        raise ProblemError(TRANSFER_NOT_FOUND)
    response = await gateway.router.call(transfer_id, "GET", f"/v1/transfers/{transfer_id}")
    if response.status != 200:
        raise ProblemError(TRANSFER_NOT_FOUND)
    transfer = response.json()
    if not (
        principal.may_use_wallet(transfer["debit_account_id"])
        or principal.may_use_wallet(transfer["credit_account_id"])
    ):
        raise ProblemError(TRANSFER_NOT_FOUND)
    return transfer


async def read_transfer(request: web.Request) -> web.Response:
    principal = _principal(request)
    await request.app[GATEWAY].limiter.check(principal.client_id)
    return web.json_response(await _transfer_for(request, principal))


async def resolve_transfer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    await gateway.limiter.check(principal.client_id)
    key = _ledger_key(request, principal)
    # Bad input is refused before any I/O, like everywhere else.
    body = await _json_body(request) if (await request.read()).strip() else None
    transfer = await _transfer_for(request, principal)
    if not principal.may_use_wallet(transfer["debit_account_id"]):
        raise Forbidden("only the debit account's owner may post or void a hold")
    response = await gateway.router.call(
        transfer["id"],
        "POST",
        f"/v1/transfers/{transfer['id']}/{request.match_info['action']}",
        body,
        idempotency_key=key,
    )
    return _pass_through(response)


async def game_operation(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = _principal(request)
    if not {Scope.GAME_SERVER, Scope.ADMIN} & principal.scopes:
        raise Forbidden("bets, wins and rollbacks need the game:server scope")
    body = await _json_body(request)
    account_id = _account_field(body, "account_id")
    _note_home(request, account_id)
    await gateway.limiter.check(principal.client_id)
    key = _ledger_key(request, principal)
    if not principal.may_play_for(await gateway.operator_of(account_id)):
        raise Forbidden("this player belongs to another operator")
    await gateway.limiter.check(None, account_id)
    response = await gateway.router.call(
        account_id,
        "POST",
        request.path,
        body,
        idempotency_key=key,
    )
    return _pass_through(response)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    snapshot = request.app[GATEWAY].directory.snapshot()
    ok = snapshot.version > 0 and request.app[GATEWAY].config.region in snapshot.regions
    return web.json_response({"status": "ready" if ok else "not_ready"}, status=200 if ok else 503)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


ROUTES = [
    ("GET", "/health/live", live),
    ("GET", "/health/ready", ready),
    ("GET", "/v1/openapi.json", openapi),
    ("POST", "/v1/accounts", create_account),
    ("GET", "/v1/accounts/{account_id}", read_account),
    ("GET", "/v1/accounts/{account_id}{suffix:/balance|/transfers}", read_account),
    ("POST", "/v1/accounts/{account_id}/status", set_account_status),
    ("POST", "/v1/transfers", create_transfer),
    ("GET", "/v1/transfers/{transfer_id}", read_transfer),
    ("POST", "/v1/transfers/{transfer_id}/{action:post|void}", resolve_transfer),
    ("POST", "/v1/bets", game_operation),
    ("POST", "/v1/wins", game_operation),
    ("POST", "/v1/rollbacks", game_operation),
]


def build_gateway_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[telemetry_middleware, problem_middleware(translate=translate)],
        client_max_size=gateway.config.body_size_bytes_max,
        # A header line may hold the longest token the gateway accepts, so that an oversized
        # token gets the gateway's own 401 rather than the parser's refusal.
        handler_args={"max_field_size": HEADER_SIZE_BYTES_MAX},
    )
    app[GATEWAY] = gateway

    async def lifecycle(app: web.Application):
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app

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

The routes of players and usernames are gateway.players'; the parts every route shares are
gateway.context's.
"""

from __future__ import annotations

import logging
import urllib.parse

import msgspec
from aiohttp import web
from opentelemetry import trace

from gateway import players, webhooks
from gateway.auth import Principal, Scope
from gateway.context import (
    GATEWAY,
    Gateway,
    creation_region,
    json_body,
    ledger_key,
    pass_through,
    principal_of,
)
from gateway.errors import Forbidden
from gateway.observability import HOME_REGION, telemetry_middleware
from gateway.openapi import AccountCreateIn, openapi_document
from gateway.problems import translate
from runtime.http_problems import problem_middleware
from wire.ids import is_system_account_id, region_of
from wire.problems import ProblemError
from wire.results import ACCOUNT_NOT_FOUND, TRANSFER_NOT_FOUND, VALIDATION_FAILED
from wire.schemas import decode

HEADER_SIZE_BYTES_MAX = 16_384
"""Longest header line; past it, 431 headers-too-large (aiohttp's default is 8,190)."""
FORWARDED_QUERY = ("as_of", "limit", "cursor", "order")
ACCOUNT_CREATE = msgspec.json.Decoder(AccountCreateIn)
log = logging.getLogger("regiongate.gateway")


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
    principal = principal_of(request)
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
    return pass_through(response)


async def create_account(request: web.Request) -> web.Response:
    """The region comes from the request (the body's ``region``), else from the client's
    configured home (its token's ``home_region``), else from the directory's one
    ``default_region``: never from the gateway it entered by, so a retry through any gateway
    reaches the same ledger and its idempotency key (docs/decisions/0001)."""
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    principal.require(Scope.ADMIN)
    await gateway.limiter.check(principal.client_id)
    key = ledger_key(request, principal)
    created: AccountCreateIn = decode(ACCOUNT_CREATE, await request.read())
    region = creation_region(gateway, principal, created.region, "account")
    metadata = dict(created.metadata or {})
    if created.operator is not None:
        metadata["operator"] = created.operator
    body = {"currency": created.currency, "metadata": metadata or None}
    response = await gateway.router.call_in_region(
        region,
        "POST",
        "/v1/accounts",
        body,
        idempotency_key=key,
    )
    return pass_through(response)


async def set_account_status(request: web.Request) -> web.Response:
    """Freeze, unfreeze or close an account: the back office's decision (fraud, responsible
    gaming, a player leaving), so admin only. Setting the status an account already has is
    answered as a success, so a retry needs no idempotency key."""
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    principal.require(Scope.ADMIN)
    account_id = request.match_info["account_id"]
    if region_of(account_id) is None:
        raise ProblemError(ACCOUNT_NOT_FOUND)
    _note_home(request, account_id)
    await gateway.limiter.check(principal.client_id, account_id)
    body = await json_body(request)
    response = await gateway.router.call(
        account_id, "POST", f"/v1/accounts/{account_id}/status", body
    )
    return pass_through(response)


async def create_transfer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    body = await json_body(request)
    debit = _account_field(body, "debit_account_id")
    credit = _account_field(body, "credit_account_id")
    _note_home(request, debit)
    await gateway.limiter.check(principal.client_id)
    if not principal.may_use_wallet(debit):
        raise Forbidden("money can only leave your own accounts")
    await gateway.limiter.check(None, _limited_account(debit, credit))
    key = ledger_key(request, principal)
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
    return pass_through(response)


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
    principal = principal_of(request)
    await request.app[GATEWAY].limiter.check(principal.client_id)
    return web.json_response(await _transfer_for(request, principal))


async def resolve_transfer(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    await gateway.limiter.check(principal.client_id)
    key = ledger_key(request, principal)
    # Bad input is refused before any I/O, like everywhere else.
    body = await json_body(request) if (await request.read()).strip() else None
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
    return pass_through(response)


async def game_operation(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    if not {Scope.GAME_SERVER, Scope.ADMIN} & principal.scopes:
        raise Forbidden("bets, wins and rollbacks need the game:server scope")
    body = await json_body(request)
    account_id = _account_field(body, "account_id")
    _note_home(request, account_id)
    await gateway.limiter.check(principal.client_id)
    key = ledger_key(request, principal)
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
    return pass_through(response)


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
    for method, path, handler in ROUTES + players.ROUTES + webhooks.ROUTES:
        app.router.add_route(method, path, handler)
    return app

"""The ledger node's internal HTTP API (aiohttp). Only signed service requests are served; the
health endpoints alone answer anonymous probes, and say nothing but up or down.

The routing and middleware chain stays aiohttp's: going around it was measured and not kept
(docs/decisions/0007)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from events.api import add_routes as add_webhook_routes
from identity.api import add_routes as add_identity_routes
from ledger_node import accounts, reads
from ledger_node.http_errors import translate
from ledger_node.node import LedgerNode
from ledger_node.observability import telemetry_middleware
from ledger_node.operations import (
    CreateTransfer,
    Flow,
    Operation,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
)
from ledger_node.requests import (
    KEY_ID,
    NODE,
    check_amount_and_currency,
    check_local,
    decode_body,
    hash_request,
    idempotency_key,
    json_response,
    metadata_text,
    outcome_response,
    result_response,
)
from ledger_node.saga_api import create_saga, saga_step
from runtime.http_problems import problem_middleware
from runtime.telemetry import CLIENT_ID
from wire.ids import (
    SAGA_ID_PATTERN,
    house_account_id,
)
from wire.problems import ProblemError
from wire.results import (
    UNAUTHENTICATED,
    VALIDATION_FAILED,
    Result,
)
from wire.schemas import (
    AccountIn,
    BetIn,
    PostIn,
    RollbackIn,
    StatusIn,
    TransferIn,
    VoidIn,
    WinIn,
)
from wire.service_auth import verify

ANONYMOUS_PATHS = frozenset({"/health/live", "/health/ready"})
HISTORY_LIMIT_DEFAULT = 50


async def authenticate(request: web.Request) -> None:
    """Refuse any request without a valid service signature, except the health probes."""
    if request.path in ANONYMOUS_PATHS:
        return
    node = request.app[NODE]
    body = await request.read()
    key_id = verify(
        node.keyring,
        request.headers,
        request.method,
        request.raw_path,  # exactly as received: what the caller signed
        body,
        node.config.signature_skew_s_max,
    )
    if key_id is None:
        raise ProblemError(UNAUTHENTICATED, "missing or invalid service signature")
    request[KEY_ID] = key_id
    request[CLIENT_ID] = key_id


async def _submit(
    request: web.Request, operation: Operation, name: str, path_id: str, struct
) -> web.Response:
    node = request.app[NODE]
    key = idempotency_key(request)
    # On timeout the batch goes on (its outcome is then unknown to this caller, who retries
    # with the same key); the problem middleware answers 503 with Retry-After.
    outcome = await node.batcher.submit(
        operation,
        idempotency_key=key,
        request_hash=hash_request(name, path_id, struct),
        name=name,
        timeout_s=node.config.request_timeout_ms / 1000,
    )
    return outcome_response(outcome)


async def create_transfer(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body: TransferIn = await decode_body(request, TransferIn)
    check_local(node, "debit_account_id", body.debit_account_id)
    check_local(node, "credit_account_id", body.credit_account_id)
    check_amount_and_currency(node, body.amount, body.currency)
    if body.pending and body.timeout_s is None:
        raise ProblemError(
            VALIDATION_FAILED, "a pending transfer needs timeout_s", field="timeout_s"
        )
    if body.pending and body.timeout_s > node.config.pending_timeout_s_max:
        raise ProblemError(
            VALIDATION_FAILED,
            f"timeout_s must be at most {node.config.pending_timeout_s_max}",
            field="timeout_s",
        )
    if not body.pending and body.timeout_s is not None:
        raise ProblemError(
            VALIDATION_FAILED, "timeout_s is only for pending transfers", field="timeout_s"
        )
    operation = CreateTransfer(
        debit_account_id=body.debit_account_id,
        credit_account_id=body.credit_account_id,
        amount=body.amount,
        currency=body.currency,
        pending=body.pending,
        timeout_s=body.timeout_s,
        reference=body.reference,
        metadata=metadata_text(body.metadata),
    )
    return await _submit(request, operation, "transfer", "", body)


async def resolve_transfer(request: web.Request) -> web.Response:
    transfer_id = request.match_info["transfer_id"]
    action = request.match_info["action"]
    if action == "post":
        body = await decode_body(request, PostIn, allow_empty=True)
        check_amount_and_currency(request.app[NODE], body.amount, None)
        operation = ResolvePending(transfer_id, Flow.POST, body.amount)
    else:
        body = await decode_body(request, VoidIn, allow_empty=True)
        operation = ResolvePending(transfer_id, Flow.VOID)
    return await _submit(request, operation, action, transfer_id, body)


async def bet_or_win(request: web.Request) -> web.Response:
    node = request.app[NODE]
    is_bet = request.path.endswith("/bets")
    body: BetIn = await decode_body(request, BetIn if is_bet else WinIn)
    check_local(node, "account_id", body.account_id)
    check_amount_and_currency(node, body.amount, body.currency)
    cls = PlaceBet if is_bet else SettleWin
    operation = cls(
        account_id=body.account_id,
        house_account_id=house_account_id(node.config.region, body.currency),
        amount=body.amount,
        currency=body.currency,
        reference=body.reference,
        round_id=body.round_id,
        metadata=metadata_text(body.metadata),
    )
    return await _submit(request, operation, "bet" if is_bet else "win", "", body)


async def rollback(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body: RollbackIn = await decode_body(request, RollbackIn)
    check_local(node, "account_id", body.account_id)
    operation = Rollback(body.account_id, body.reference, body.round_id)
    return await _submit(request, operation, "rollback", "", body)


async def create_account(request: web.Request) -> web.Response:
    node = request.app[NODE]
    key = idempotency_key(request)
    body: AccountIn = await decode_body(request, AccountIn)
    check_amount_and_currency(node, None, body.currency)
    async with node.pool.acquire() as connection:
        result, account, replayed = await accounts.create_account(
            connection,
            region=node.config.region,
            currency=body.currency,
            metadata=metadata_text(body.metadata),
            idempotency_key=key,
            request_hash=hash_request("account", "", body),
        )
    if result is not Result.OK:
        return result_response(result)
    return json_response(account, 201, replayed)


async def get_account(request: web.Request) -> web.Response:
    async with request.app[NODE].pool.acquire() as connection:
        account = await reads.account(connection, request.match_info["account_id"])
    return json_response(account) if account else result_response(Result.ACCOUNT_NOT_FOUND)


async def set_account_status(request: web.Request) -> web.Response:
    body: StatusIn = await decode_body(request, StatusIn)
    async with request.app[NODE].pool.acquire() as connection:
        result, account = await accounts.set_status(
            connection, request.match_info["account_id"], body.status
        )
    return json_response(account) if result is Result.OK else result_response(result)


async def get_balance(request: web.Request) -> web.Response:
    as_of = None
    raw = request.query.get("as_of")
    if raw is not None:
        try:
            as_of = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise ProblemError(VALIDATION_FAILED, "as_of must be RFC 3339", field="as_of") from exc
        if as_of.tzinfo is None:
            raise ProblemError(VALIDATION_FAILED, "as_of needs a UTC offset", field="as_of")
    async with request.app[NODE].pool.acquire() as connection:
        balance = await reads.balance(connection, request.match_info["account_id"], as_of)
    return json_response(balance) if balance else result_response(Result.ACCOUNT_NOT_FOUND)


async def get_history(request: web.Request) -> web.Response:
    node = request.app[NODE]
    limit_max = node.config.history_limit_max
    try:
        limit = int(request.query.get("limit", HISTORY_LIMIT_DEFAULT))
    except ValueError as exc:
        raise ProblemError(VALIDATION_FAILED, "limit must be an integer", field="limit") from exc
    if not 1 <= limit <= limit_max:
        raise ProblemError(VALIDATION_FAILED, f"limit must be in [1, {limit_max}]", field="limit")
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ProblemError(VALIDATION_FAILED, "order must be asc or desc", field="order")
    account_id = request.match_info["account_id"]
    async with node.pool.acquire() as connection:
        if await reads.account(connection, account_id) is None:
            return result_response(Result.ACCOUNT_NOT_FOUND)
        try:
            page = await reads.history(
                connection,
                account_id,
                limit=limit,
                cursor=request.query.get("cursor"),
                order=order,
            )
        except reads.CursorError as exc:
            raise ProblemError(VALIDATION_FAILED, str(exc), field="cursor") from exc
    return json_response(page)


async def get_transfer(request: web.Request) -> web.Response:
    transfer_id = request.match_info["transfer_id"]
    if SAGA_ID_PATTERN.match(transfer_id):
        async with request.app[NODE].pool.acquire() as connection:
            view = await reads.saga(connection, transfer_id)
        if view is None:
            return result_response(Result.SAGA_NOT_FOUND)
        return json_response(view)
    async with request.app[NODE].pool.acquire() as connection:
        transfer = await reads.transfer(connection, request.match_info["transfer_id"])
    if transfer is None:
        return result_response(Result.PENDING_TRANSFER_NOT_FOUND, field="transfer_id")
    return json_response(transfer)


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    ok, reason = await request.app[NODE].ready()
    return json_response(
        {"status": "ready" if ok else "not_ready", "reason": reason}, 200 if ok else 503
    )


async def stats(request: web.Request) -> web.Response:
    node = request.app[NODE]
    batch = node.batcher.stats
    return json_response(
        {
            "region": node.config.region,
            "queue_depth": node.batcher.queue_depth,
            "batches": batch.batches,
            "operations": batch.operations,
            "retries": batch.retries,
            "failed_batches": batch.failed_batches,
            "batch_size_max_seen": batch.batch_size_max_seen,
            "batch_seconds_total": round(batch.batch_seconds_total, 3),
        }
    )


def build_app(node: LedgerNode, *, manage_node: bool = True) -> web.Application:
    """The aiohttp application; with manage_node it starts and stops the node with the app."""
    app = web.Application(
        middlewares=[telemetry_middleware, problem_middleware(authenticate, translate)],
        client_max_size=node.config.body_size_bytes_max,
    )
    app[NODE] = node
    if manage_node:

        async def lifecycle(app: web.Application):
            await node.start()
            yield
            await node.stop()

        app.cleanup_ctx.append(lifecycle)
    account = "/v1/accounts/{account_id}"
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/v1/stats", stats)
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get(account, get_account)
    app.router.add_post(account + "/status", set_account_status)
    app.router.add_get(account + "/balance", get_balance)
    app.router.add_get(account + "/transfers", get_history)
    app.router.add_post("/v1/transfers", create_transfer)
    app.router.add_post("/v1/sagas", create_saga)
    app.router.add_post("/v1/saga-steps/{saga_id}/{action:credit|cancel}", saga_step)
    app.router.add_get("/v1/transfers/{transfer_id}", get_transfer)
    app.router.add_post("/v1/transfers/{transfer_id}/{action:post|void}", resolve_transfer)
    app.router.add_post("/v1/bets", bet_or_win)
    app.router.add_post("/v1/wins", bet_or_win)
    app.router.add_post("/v1/rollbacks", rollback)
    add_identity_routes(app, lambda: node.identity)
    add_webhook_routes(app, node.webhooks_context)
    return app

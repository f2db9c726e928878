"""The ledger node's internal HTTP API (aiohttp). Only signed service requests are served; the
health endpoints alone answer anonymous probes, and say nothing but up or down."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

import msgspec
from aiohttp import web

from ledger_node import accounts, reads, render
from ledger_node.http_errors import ProblemError, field_of, problem_middleware
from ledger_node.ids import (
    SAGA_ID_PATTERN,
    house_account_id,
    new_saga_id,
    region_of,
    saga_credit_transfer_id,
)
from ledger_node.node import LedgerNode
from ledger_node.observability import telemetry_middleware
from ledger_node.operations import (
    CancelStep,
    CreateTransfer,
    CreditStep,
    Flow,
    Operation,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
    StartSaga,
)
from ledger_node.render import JSON_CONTENT_TYPE
from ledger_node.results import (
    CROSS_REGION_UNAVAILABLE,
    FORBIDDEN,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    MALFORMED_JSON,
    OVERLOADED,
    PROBLEMS,
    UNAUTHENTICATED,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_FAILED,
    Result,
)
from ledger_node.schemas import (
    DECODERS,
    AccountIn,
    BetIn,
    PostIn,
    RollbackIn,
    SagaStepIn,
    StatusIn,
    TransferIn,
    VoidIn,
    WinIn,
)
from ledger_node.service_auth import verify

NODE = web.AppKey("node", LedgerNode)
KEY_ID = web.RequestKey("key_id", str)  # the service key that signed the request
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:~-]{1,128}$")
ANONYMOUS_PATHS = frozenset({"/health/live", "/health/ready"})
HISTORY_LIMIT_DEFAULT = 50


def _json(body: bytes | dict, status: int = 200, replayed: bool = False) -> web.Response:
    payload = body if isinstance(body, bytes) else render.encode(body)
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return web.Response(
        status=status, body=payload, content_type=JSON_CONTENT_TYPE, headers=headers
    )


def _result_response(result: Result, **extra) -> web.Response:
    status, body = render.result_problem(result, **extra)
    return web.Response(status=status, body=body, content_type=render.PROBLEM_CONTENT_TYPE)


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
        raise ProblemError(UNAUTHENTICATED)
    request[KEY_ID] = key_id


async def _decode(request: web.Request, cls: type, allow_empty: bool = False):
    body = await request.read()
    if allow_empty and not body.strip():
        body = b"{}"
    elif request.content_type not in ("application/json", "application/octet-stream"):
        raise ProblemError(UNSUPPORTED_MEDIA_TYPE)
    try:
        return DECODERS[cls].decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise ProblemError(VALIDATION_FAILED, message, field=field_of(message)) from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(MALFORMED_JSON, str(exc)) from exc


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ProblemError(IDEMPOTENCY_KEY_MISSING)
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise ProblemError(IDEMPOTENCY_KEY_INVALID, "1 to 128 characters of A-Z a-z 0-9 . _ : ~ -")
    return key


def _request_hash(name: str, path_id: str, struct) -> bytes:
    return hashlib.sha256(f"{name}\n{path_id}\n".encode() + msgspec.json.encode(struct)).digest()


def _check_local(node: LedgerNode, field: str, account_id: str) -> None:
    if region_of(account_id) != node.config.region:
        raise ProblemError(
            PROBLEMS[Result.ACCOUNT_NOT_IN_REGION],
            f"{account_id} is not an account of region {node.config.region}",
            field=field,
        )


def _check_amount_and_currency(node: LedgerNode, amount: int | None, currency: str | None) -> None:
    if amount is not None and amount > node.config.amount_max:
        raise ProblemError(
            VALIDATION_FAILED, f"amount must be at most {node.config.amount_max}", field="amount"
        )
    if currency is not None and node.config.currency(currency) is None:
        raise ProblemError(PROBLEMS[Result.UNKNOWN_CURRENCY], f"{currency} is not configured")


def _metadata(value: dict | None) -> str | None:
    return msgspec.json.encode(value).decode() if value else None


async def _submit(
    request: web.Request, operation: Operation, name: str, path_id: str, struct
) -> web.Response:
    node = request.app[NODE]
    key = _idempotency_key(request)
    # On timeout the batch goes on (its outcome is then unknown to this caller, who retries
    # with the same key); the problem middleware answers 503 with Retry-After.
    outcome = await node.batcher.submit(
        operation,
        idempotency_key=key,
        request_hash=_request_hash(name, path_id, struct),
        name=name,
        timeout_s=node.config.request_timeout_ms / 1000,
    )
    return _outcome_response(outcome)


async def create_transfer(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body: TransferIn = await _decode(request, TransferIn)
    _check_local(node, "debit_account_id", body.debit_account_id)
    _check_local(node, "credit_account_id", body.credit_account_id)
    _check_amount_and_currency(node, body.amount, body.currency)
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
        metadata=_metadata(body.metadata),
    )
    return await _submit(request, operation, "transfer", "", body)


async def resolve_transfer(request: web.Request) -> web.Response:
    transfer_id = request.match_info["transfer_id"]
    action = request.match_info["action"]
    if action == "post":
        body = await _decode(request, PostIn, allow_empty=True)
        _check_amount_and_currency(request.app[NODE], body.amount, None)
        operation = ResolvePending(transfer_id, Flow.POST, body.amount)
    else:
        body = await _decode(request, VoidIn, allow_empty=True)
        operation = ResolvePending(transfer_id, Flow.VOID)
    return await _submit(request, operation, action, transfer_id, body)


async def bet_or_win(request: web.Request) -> web.Response:
    node = request.app[NODE]
    is_bet = request.path.endswith("/bets")
    body: BetIn = await _decode(request, BetIn if is_bet else WinIn)
    _check_local(node, "account_id", body.account_id)
    _check_amount_and_currency(node, body.amount, body.currency)
    cls = PlaceBet if is_bet else SettleWin
    operation = cls(
        account_id=body.account_id,
        house_account_id=house_account_id(node.config.region, body.currency),
        amount=body.amount,
        currency=body.currency,
        reference=body.reference,
        round_id=body.round_id,
        metadata=_metadata(body.metadata),
    )
    return await _submit(request, operation, "bet" if is_bet else "win", "", body)


async def rollback(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body: RollbackIn = await _decode(request, RollbackIn)
    _check_local(node, "account_id", body.account_id)
    operation = Rollback(body.account_id, body.reference, body.round_id)
    return await _submit(request, operation, "rollback", "", body)


async def create_account(request: web.Request) -> web.Response:
    node = request.app[NODE]
    key = _idempotency_key(request)
    body: AccountIn = await _decode(request, AccountIn)
    _check_amount_and_currency(node, None, body.currency)
    async with node.pool.acquire() as connection:
        result, account, replayed = await accounts.create_account(
            connection,
            region=node.config.region,
            currency=body.currency,
            metadata=_metadata(body.metadata),
            idempotency_key=key,
            request_hash=_request_hash("account", "", body),
        )
    if result is not Result.OK:
        return _result_response(result)
    return _json(account, 201, replayed)


async def get_account(request: web.Request) -> web.Response:
    async with request.app[NODE].pool.acquire() as connection:
        account = await reads.account(connection, request.match_info["account_id"])
    return _json(account) if account else _result_response(Result.ACCOUNT_NOT_FOUND)


async def set_account_status(request: web.Request) -> web.Response:
    body: StatusIn = await _decode(request, StatusIn)
    async with request.app[NODE].pool.acquire() as connection:
        result, account = await accounts.set_status(
            connection, request.match_info["account_id"], body.status
        )
    return _json(account) if result is Result.OK else _result_response(result)


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
    return _json(balance) if balance else _result_response(Result.ACCOUNT_NOT_FOUND)


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
            return _result_response(Result.ACCOUNT_NOT_FOUND)
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
    return _json(page)


async def create_saga(request: web.Request) -> web.Response:
    """A cross-region transfer, orchestrated here (the debit side). Answers the final result
    when the saga ends within saga.wait_ms, else 202 with the transfer's URL."""
    node = request.app[NODE]
    key = _idempotency_key(request)
    body: TransferIn = await _decode(request, TransferIn)
    if node.sagas is None:
        raise ProblemError(CROSS_REGION_UNAVAILABLE, "this node has no directory of peer regions")
    _check_local(node, "debit_account_id", body.debit_account_id)
    _check_amount_and_currency(node, body.amount, body.currency)
    if body.pending or body.timeout_s is not None:
        raise ProblemError(
            VALIDATION_FAILED, "a cross-region transfer cannot be pending", field="pending"
        )
    credit_region = node.home_region(body.credit_account_id)
    if credit_region == node.config.region:
        raise ProblemError(
            VALIDATION_FAILED,
            "both accounts are in this region: use POST /v1/transfers",
            field="credit_account_id",
        )
    if credit_region not in node.config.peers:
        return _result_response(Result.REGION_NOT_PEER)
    if not node.sagas.has_room():
        raise ProblemError(OVERLOADED, "too many cross-region transfers in flight")
    saga = node.config.saga
    operation = StartSaga(
        saga_id=new_saga_id(node.config.region),
        debit_account_id=body.debit_account_id,
        credit_account_id=body.credit_account_id,
        credit_region=credit_region,
        amount=body.amount,
        currency=body.currency,
        deadline_ms=saga.deadline_ms,
        lease_owner=node.sagas.owner,
        lease_ms=saga.lease_ms,
        reference=body.reference,
        metadata=_metadata(body.metadata),
    )
    outcome = await node.batcher.submit(
        operation,
        idempotency_key=key,
        request_hash=_request_hash("saga", "", body),
        name="saga",
        timeout_s=node.config.request_timeout_ms / 1000,
    )
    if outcome.status_code != 202:
        return _outcome_response(outcome)
    started = msgspec.json.decode(outcome.body)
    row = None
    if not outcome.replayed:
        # This request started the saga, so its batch gave this process the lease: drive it
        # from what the batch wrote, with no claim and no read back (the row as inserted).
        row = {
            **started,
            "status": "held",
            "credit_region": operation.credit_region,
            "metadata": operation.metadata,
            "hold_transfer_id": outcome.transfer_id,
            "deadline_at": datetime.fromisoformat(started["deadline_at"]),
            "created_at": datetime.fromisoformat(started["created_at"]),
            "attempts": 0,
        }
    final = await node.sagas.wait(started["id"], saga.wait_ms / 1000, row)
    if row is not None and final is not None:
        view = render.saga_dict({**row, **final})
    else:
        async with node.pool.acquire() as connection:
            view = await reads.saga(connection, started["id"])
    return _saga_response(view, outcome.replayed)


def _saga_response(view: dict, replayed: bool) -> web.Response:
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    if view["status"] == "completed":
        return web.Response(
            status=201, body=render.encode(view), content_type=JSON_CONTENT_TYPE, headers=headers
        )
    if view["status"] == "pending":
        headers["Location"] = f"/v1/transfers/{view['id']}"
        return web.Response(
            status=202, body=render.encode(view), content_type=JSON_CONTENT_TYPE, headers=headers
        )
    # Compensated: nothing moved. The problem says why, and carries the transfer for reference.
    try:
        result = Result(view["reason"])
    except ValueError:
        result = Result.DEADLINE_EXCEEDED
    status, body = render.result_problem(result, transfer=view)
    return web.Response(
        status=status, body=body, content_type=render.PROBLEM_CONTENT_TYPE, headers=headers
    )


def _outcome_response(outcome) -> web.Response:
    content_type = JSON_CONTENT_TYPE if outcome.status_code < 400 else render.PROBLEM_CONTENT_TYPE
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else None
    return web.Response(
        status=outcome.status_code, body=outcome.body, content_type=content_type, headers=headers
    )


async def saga_step(request: web.Request) -> web.Response:
    """Step 2 of another region's saga, or its cancel (this node is the destination)."""
    node = request.app[NODE]
    peer_key_ids = node.config.peer_key_ids
    if peer_key_ids and request.get(KEY_ID) not in peer_key_ids:
        # Step 2 takes money out of a transit account: only another region's ledger may ask,
        # never a gateway, whose key faces the internet's traffic.
        raise ProblemError(FORBIDDEN, "saga steps take only peer ledgers' keys")
    saga_id = request.match_info["saga_id"]
    match = SAGA_ID_PATTERN.match(saga_id)
    if match is None:
        raise ProblemError(VALIDATION_FAILED, "not a saga id", field="saga_id")
    body: SagaStepIn = await _decode(request, SagaStepIn)
    if match[1] != body.origin_region:
        raise ProblemError(
            VALIDATION_FAILED, "the saga id names another region", field="origin_region"
        )
    credit = request.match_info["action"] == "credit"
    if credit:
        # A cancel only writes a tombstone, so it must land even for an account that has been
        # re-homed since the saga began (its step 2 then fails here, and the saga voids).
        _check_local(node, "credit_account_id", body.credit_account_id)
    _check_amount_and_currency(node, body.amount, body.currency)
    common = {
        "step_id": saga_id,
        "saga_id": saga_id,
        "origin_region": body.origin_region,
        "credit_account_id": body.credit_account_id,
        "amount": body.amount,
        "currency": body.currency,
    }
    if credit:
        transfer_id = saga_credit_transfer_id(saga_id, node.config.region)
        operation = CreditStep(**common, transfer_id=transfer_id)
    else:
        operation = CancelStep(**common)
    # The step id is the idempotency key: the step's record answers every repeat the same way.
    outcome = await node.batcher.submit(
        operation,
        idempotency_key=None,
        request_hash=b"",
        name="saga-step",
        timeout_s=node.config.request_timeout_ms / 1000,
    )
    return _outcome_response(outcome)


async def get_transfer(request: web.Request) -> web.Response:
    transfer_id = request.match_info["transfer_id"]
    if SAGA_ID_PATTERN.match(transfer_id):
        async with request.app[NODE].pool.acquire() as connection:
            view = await reads.saga(connection, transfer_id)
        if view is None:
            return _result_response(Result.SAGA_NOT_FOUND)
        return _json(view)
    async with request.app[NODE].pool.acquire() as connection:
        transfer = await reads.transfer(connection, request.match_info["transfer_id"])
    if transfer is None:
        return _result_response(Result.PENDING_TRANSFER_NOT_FOUND, field="transfer_id")
    return _json(transfer)


async def live(request: web.Request) -> web.Response:
    return _json({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    ok, reason = await request.app[NODE].ready()
    return _json({"status": "ready" if ok else "not_ready", "reason": reason}, 200 if ok else 503)


async def stats(request: web.Request) -> web.Response:
    node = request.app[NODE]
    batch = node.batcher.stats
    return _json(
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
        middlewares=[telemetry_middleware, problem_middleware(authenticate)],
        client_max_size=node.config.body_size_max_bytes,
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
    return app

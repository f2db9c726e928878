"""The saga's HTTP endpoints on a ledger node: starting a cross-region transfer here (the debit
side orchestrates it) and, as the destination of another region's saga, its step 2 or cancel."""

from __future__ import annotations

from datetime import datetime

import msgspec
from aiohttp import web

from ledger_node import reads, render
from ledger_node.answers import answer
from ledger_node.operations import CancelStep, CreditStep, Effect, StartSaga
from ledger_node.requests import (
    KEY_ID,
    NODE,
    REPLAYED_HEADER,
    check_amount_and_currency,
    check_local,
    decode_body,
    hash_request,
    idempotency_key,
    metadata_text,
    outcome_response,
    result_response,
)
from wire.ids import SAGA_ID_PATTERN, new_saga_id, saga_credit_transfer_id
from wire.problems import (
    JSON_CONTENT_TYPE,
    PROBLEM_CONTENT_TYPE,
    ProblemError,
    encode,
    result_problem,
)
from wire.results import (
    CROSS_REGION_UNAVAILABLE,
    FORBIDDEN,
    OVERLOADED,
    REGION_UNAVAILABLE,
    VALIDATION_FAILED,
    Result,
)
from wire.schemas import SagaStepIn, TransferIn

DOWN_RETRY_AFTER_S = 30


async def create_saga(request: web.Request) -> web.Response:
    """A cross-region transfer, orchestrated here (the debit side). Answers the final result
    when the saga ends within saga.wait_ms, else 202 with the transfer's URL."""
    # Long: the checks, the start and the wait, in the order a request meets them.
    node = request.app[NODE]
    key = idempotency_key(request)
    body: TransferIn = await decode_body(request, TransferIn)
    if node.sagas is None:
        raise ProblemError(CROSS_REGION_UNAVAILABLE, "this node has no directory of peer regions")
    check_local(node, "debit_account_id", body.debit_account_id)
    check_amount_and_currency(node, body.amount, body.currency)
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
        return result_response(Result.REGION_NOT_PEER)
    if node.region_is_down(credit_region):
        # Consistency over availability: a hold towards a region marked down could only wait
        # for it, so refuse before anything is held.
        raise ProblemError(
            REGION_UNAVAILABLE,
            "the credit account's home region is down; nothing was moved, retry later",
            retry_after_s=DOWN_RETRY_AFTER_S,
            field="credit_account_id",
        )
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
        metadata=metadata_text(body.metadata),
    )
    outcome = await node.batcher.submit(
        operation,
        idempotency_key=key,
        request_hash=hash_request("saga", "", body),
        name="saga",
        timeout_s=node.config.request_timeout_ms / 1000,
    )
    status, body = answer(outcome)
    if status != Effect.STARTED.value:
        return outcome_response(outcome)
    started = msgspec.json.decode(body)
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
            status=201, body=encode(view), content_type=JSON_CONTENT_TYPE, headers=headers
        )
    if view["status"] == "pending":
        headers["Location"] = f"/v1/transfers/{view['id']}"
        return web.Response(
            status=202, body=encode(view), content_type=JSON_CONTENT_TYPE, headers=headers
        )
    # Compensated: nothing moved. The problem says why, and carries the transfer for reference.
    try:
        result = Result(view["reason"])
    except ValueError:
        result = Result.DEADLINE_EXCEEDED
    status, body = result_problem(result, transfer=view)
    return web.Response(
        status=status, body=body, content_type=PROBLEM_CONTENT_TYPE, headers=headers
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
    body: SagaStepIn = await decode_body(request, SagaStepIn)
    if match[1] != body.origin_region:
        raise ProblemError(
            VALIDATION_FAILED, "the saga id names another region", field="origin_region"
        )
    credit = request.match_info["action"] == "credit"
    if credit:
        # A cancel only writes a tombstone, so it must land even for an account that has been
        # re-homed since the saga began (its step 2 then fails here, and the saga voids).
        check_local(node, "credit_account_id", body.credit_account_id)
    check_amount_and_currency(node, body.amount, body.currency)
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
    return outcome_response(outcome)

"""What the ledger API's handlers share: the app's keys, reading and validating a request,
and turning an outcome into a response. One place, so every endpoint refuses bad input and
answers replays the same way."""

from __future__ import annotations

import hashlib
import re

import msgspec
from aiohttp import web

from ledger_node.answers import answer
from ledger_node.node import LedgerNode
from ledger_node.operations import Outcome
from wire.ids import region_of
from wire.problems import (
    JSON_CONTENT_TYPE,
    PROBLEM_CONTENT_TYPE,
    REPLAYED_HEADER,
    ProblemError,
    encode,
    result_problem,
)
from wire.results import (
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    PROBLEMS,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_FAILED,
    Result,
)
from wire.schemas import DECODERS, decode

NODE = web.AppKey("node", LedgerNode)
KEY_ID = web.RequestKey("key_id", str)  # the service key that signed the request
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:~-]{1,128}$")


def json_response(body: bytes | dict, status: int = 200, replayed: bool = False) -> web.Response:
    payload = body if isinstance(body, bytes) else encode(body)
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return web.Response(
        status=status, body=payload, content_type=JSON_CONTENT_TYPE, headers=headers
    )


def result_response(result: Result, **extra) -> web.Response:
    status, body = result_problem(result, **extra)
    return web.Response(status=status, body=body, content_type=PROBLEM_CONTENT_TYPE)


async def decode_body(request: web.Request, cls: type, allow_empty: bool = False):
    body = await request.read()
    if allow_empty and not body.strip():
        body = b"{}"
    elif request.content_type not in ("application/json", "application/octet-stream"):
        raise ProblemError(UNSUPPORTED_MEDIA_TYPE)
    return decode(DECODERS[cls], body)


def idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ProblemError(IDEMPOTENCY_KEY_MISSING)
    if not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise ProblemError(IDEMPOTENCY_KEY_INVALID, "1 to 128 characters of A-Z a-z 0-9 . _ : ~ -")
    return key


def hash_request(name: str, path_id: str, struct) -> bytes:
    return hashlib.sha256(f"{name}\n{path_id}\n".encode() + msgspec.json.encode(struct)).digest()


def check_local(node: LedgerNode, field: str, account_id: str) -> None:
    if region_of(account_id) != node.config.region:
        raise ProblemError(
            PROBLEMS[Result.ACCOUNT_NOT_IN_REGION],
            f"{account_id} is not an account of region {node.config.region}",
            field=field,
        )


def check_amount_and_currency(node: LedgerNode, amount: int | None, currency: str | None) -> None:
    if amount is not None and amount > node.config.amount_max:
        raise ProblemError(
            VALIDATION_FAILED, f"amount must be at most {node.config.amount_max}", field="amount"
        )
    if currency is not None and node.config.currency(currency) is None:
        raise ProblemError(PROBLEMS[Result.UNKNOWN_CURRENCY], f"{currency} is not configured")


def metadata_text(value: dict | None) -> str | None:
    return msgspec.json.encode(value).decode() if value else None


def outcome_response(outcome: Outcome) -> web.Response:
    status, body = answer(outcome)
    content_type = JSON_CONTENT_TYPE if status < 400 else PROBLEM_CONTENT_TYPE
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else None
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)

"""The public API's contract, OpenAPI 3.1, served at /v1/openapi.json. A test checks that its
paths and methods are exactly the routes the gateway serves."""

from __future__ import annotations

import functools

from wire.ids import ACCOUNT_ID_PATTERN, CURRENCY_PATTERN
from wire.limits import AMOUNT_MAX_LIMIT

PROBLEM = {"$ref": "#/components/responses/Problem"}
ACCOUNT_ID = {"type": "string", "pattern": ACCOUNT_ID_PATTERN.pattern}
AMOUNT = {
    "type": "integer",
    "minimum": 1,
    "maximum": AMOUNT_MAX_LIMIT,
    "description": "Minor units of the currency; never a float.",
}
CURRENCY = {"type": "string", "pattern": CURRENCY_PATTERN.pattern}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:~-]{1,100}$"},
    "description": "Same key and body: the original answer, with Idempotent-Replayed: true. "
    "Same key, other body: 409 idempotency-conflict. A key's scope is the client that sends it "
    "and the region that owns what the request changes (the debited account's home region, or "
    "the region an account is created in), never the gateway it enters by: a retry through any "
    "region's gateway gets the original answer. Keys are not global: the same key on requests "
    "that change different regions applies once in each, so use a new key per operation.",
}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _operation(
    summary: str,
    *,
    scopes: str,
    body: dict | None = None,
    idempotent=False,
    params: list | None = None,
    ok: str = "200",
    accepted: bool = False,
) -> dict:
    operation = {
        "summary": summary,
        "description": f"Scopes: {scopes}.",
        "security": [{"bearer": []}],
        "parameters": [*(params or []), *([IDEMPOTENCY_KEY] if idempotent else [])],
        "responses": {
            ok: {"description": "OK", "content": {"application/json": {"schema": {}}}},
            "400": PROBLEM,
            "401": PROBLEM,
            "403": PROBLEM,
            "404": PROBLEM,
            "409": PROBLEM,
            "413": PROBLEM,
            "422": PROBLEM,
            "429": PROBLEM,
            "431": PROBLEM,
            "503": PROBLEM,
            "default": PROBLEM,
        },
    }
    if accepted:
        operation["responses"]["202"] = {
            "description": "Accepted: a cross-region transfer still running; poll Location",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {}}},
        }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _object(required: list[str], **properties) -> dict:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


@functools.cache
def openapi_document() -> dict:
    account = [_path_param("account_id")]
    transfer = [_path_param("transfer_id")]
    game_body = _object(
        ["account_id", "amount", "currency", "reference"],
        account_id=ACCOUNT_ID,
        amount=AMOUNT,
        currency=CURRENCY,
        reference={"type": "string", "maxLength": 128},
        round_id={"type": "string", "maxLength": 128},
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "regiongate",
            "version": "1",
            "description": "Any region's gateway serves any account; errors are RFC 9457 "
            "problem documents with a stable type.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem; 429 and 503 carry Retry-After",
                    "content": {
                        "application/problem+json": {
                            # RFC 9457 (3.2) lets a problem type carry extension members,
                            # and clients ignore the ones they do not know: the ones
                            # regiongate sends are listed, others may come.
                            "schema": {
                                **_object(
                                    ["type", "title", "status"],
                                    type={"type": "string"},
                                    title={"type": "string"},
                                    status={"type": "integer"},
                                    detail={"type": "string"},
                                    field={"type": "string"},
                                    code={
                                        "type": "string",
                                        "description": "The ledger's result code",
                                    },
                                    region={
                                        "type": "string",
                                        "description": "The region that is unavailable",
                                    },
                                    transfer={
                                        "type": "object",
                                        "description": "A cross-region transfer that was "
                                        "compensated: the saga as GET /v1/transfers/{id} shows",
                                    },
                                ),
                                "additionalProperties": True,
                            }
                        }
                    },
                }
            },
        },
        "paths": {
            "/health/live": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}
            },
            "/health/ready": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}},
                }
            },
            "/v1/accounts": {
                "post": _operation(
                    "Create a player account in a region",
                    scopes="admin",
                    idempotent=True,
                    ok="201",
                    body=_object(
                        ["currency"],
                        currency=CURRENCY,
                        region={
                            "type": "string",
                            "description": "The account's home region. Without it: the "
                            "client's home_region claim, else the directory's default region; "
                            "never the gateway the request entered by.",
                        },
                        operator={"type": "string"},
                        metadata={"type": "object"},
                    ),
                )
            },
            "/v1/accounts/{account_id}": {
                "get": _operation(
                    "An account and its balance",
                    scopes="wallet (own), game:server (its operator's players), admin",
                    params=account,
                )
            },
            "/v1/accounts/{account_id}/status": {
                "post": _operation(
                    "Freeze, unfreeze or close an account. Closing needs a zero balance and no"
                    " holds; closed is final. Setting the status an account has is a success.",
                    scopes="admin",
                    params=account,
                    body=_object(["status"], status={"enum": ["active", "frozen", "closed"]}),
                )
            },
            "/v1/accounts/{account_id}/balance": {
                "get": _operation(
                    "Balance, now or as_of a past time",
                    scopes="wallet, game:server, admin",
                    params=[
                        *account,
                        {
                            "name": "as_of",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                    ],
                )
            },
            "/v1/accounts/{account_id}/transfers": {
                "get": _operation(
                    "History, newest first, cursor-paginated",
                    scopes="wallet, game:server, admin",
                    params=[
                        *account,
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "order", "in": "query", "schema": {"enum": ["desc", "asc"]}},
                    ],
                )
            },
            "/v1/transfers": {
                "post": _operation(
                    "Move money, at once or as a hold. Between accounts of different regions"
                    " the transfer is a saga: 201 when it completed within the wait, 202 with"
                    " a Location to poll while it runs, a problem when it was compensated"
                    " (the problem's transfer member shows it). Holds stay within a region.",
                    scopes="wallet (from own accounts), admin",
                    idempotent=True,
                    ok="201",
                    accepted=True,
                    body=_object(
                        ["debit_account_id", "credit_account_id", "amount", "currency"],
                        debit_account_id=ACCOUNT_ID,
                        credit_account_id=ACCOUNT_ID,
                        amount=AMOUNT,
                        currency=CURRENCY,
                        pending={"type": "boolean"},
                        timeout_s={"type": "integer", "minimum": 1},
                        reference={"type": "string"},
                        metadata={"type": "object"},
                    ),
                )
            },
            "/v1/transfers/{transfer_id}": {
                "get": _operation(
                    "One transfer", scopes="wallet (either side), admin", params=transfer
                )
            },
            "/v1/transfers/{transfer_id}/post": {
                "post": _operation(
                    "Post a hold, in full or in part",
                    scopes="wallet (debit side), admin",
                    params=transfer,
                    idempotent=True,
                    ok="201",
                    body=_object([], amount=AMOUNT),
                )
            },
            "/v1/transfers/{transfer_id}/void": {
                "post": _operation(
                    "Release a hold",
                    scopes="wallet (debit side), admin",
                    params=transfer,
                    idempotent=True,
                    ok="201",
                )
            },
            "/v1/bets": {
                "post": _operation(
                    "Bet: player to house",
                    scopes="game:server, admin",
                    idempotent=True,
                    ok="201",
                    body=game_body,
                )
            },
            "/v1/wins": {
                "post": _operation(
                    "Win: house to player",
                    scopes="game:server, admin",
                    idempotent=True,
                    ok="201",
                    body=game_body,
                )
            },
            "/v1/rollbacks": {
                "post": _operation(
                    "Roll a bet back by its reference (before the bet: a tombstone)",
                    scopes="game:server, admin",
                    idempotent=True,
                    body=_object(
                        ["account_id", "reference"],
                        account_id=ACCOUNT_ID,
                        reference={"type": "string", "maxLength": 128},
                    ),
                )
            },
        },
    }

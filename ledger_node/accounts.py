"""Accounts: the region's reference data (currencies, system accounts), player account creation
and status changes. None of these move money, so they run as plain transactions, outside the
batcher; a status change takes the account's row lock, the same lock every batch takes."""

from __future__ import annotations

import hashlib

import asyncpg

from ledger_node import render
from ledger_node.config import LedgerConfig
from ledger_node.errors import ConfigError, LedgerError
from ledger_node.operations import ACCOUNT_STATUS_TRANSITIONS, AccountKind, AccountStatus
from wire.ids import (
    clearing_account_id,
    house_account_id,
    new_account_id,
    transit_account_id,
)
from wire.results import Result

ACCOUNT_COLUMNS = (
    "id, region, currency, kind, peer_region, status, debits_posted, credits_posted, "
    "debits_pending, credits_pending, version, metadata, created_at"
)


def system_accounts(config: LedgerConfig) -> list[tuple[str, str, str, str | None]]:
    """(id, currency, kind, peer_region) of every system account the region must have."""
    accounts = []
    for currency in config.currencies:
        code = currency.code
        accounts.append((house_account_id(config.region, code), code, AccountKind.HOUSE, None))
        accounts.append(
            (clearing_account_id(config.region, code), code, AccountKind.CLEARING, None)
        )
        for peer in config.peers:
            transit = transit_account_id(config.region, peer, code)
            accounts.append((transit, code, AccountKind.TRANSIT, peer))
    return accounts


async def sync_reference_data(connection: asyncpg.Connection, config: LedgerConfig) -> None:
    """Insert configured currencies and system accounts; refuse a changed currency exponent,
    since every stored amount of that currency would change its meaning."""
    async with connection.transaction():
        for currency in config.currencies:
            stored = await connection.fetchval(
                "INSERT INTO currencies (code, exponent) VALUES ($1, $2) "
                "ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code RETURNING exponent",
                currency.code,
                currency.exponent,
            )
            if stored != currency.exponent:
                raise ConfigError(
                    f"currency {currency.code} has exponent {stored} in the ledger, "
                    f"config says {currency.exponent}"
                )
        await connection.executemany(
            "INSERT INTO accounts (id, region, currency, kind, peer_region) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            [(a[0], config.region, a[1], a[2], a[3]) for a in system_accounts(config)],
        )


def account_event(event_type: str, source: str) -> str:
    """The outbox row of an account's change, its data written with it (docs/events.md), for
    the accounts the CTE source returns."""
    return (
        "INSERT INTO outbox (family, type, ref, aggregate_id, version, body)"
        f" SELECT 'account', '{event_type}', id, id, version, jsonb_build_object("
        "'account_id', id, 'region', region, 'currency', currency, 'kind', kind,"
        " 'status', status, 'metadata', metadata, 'created_at',"
        """ to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))"""
        f" FROM {source}"
    )


def account_dict(row) -> dict:
    posted = row["credits_posted"] - row["debits_posted"]
    return {
        "id": row["id"],
        "region": row["region"],
        "currency": row["currency"],
        "kind": row["kind"],
        "peer_region": row["peer_region"],
        "status": row["status"],
        "balance": {
            "posted": posted,
            "pending_debits": row["debits_pending"],
            "pending_credits": row["credits_pending"],
            "available": posted - row["debits_pending"],
            "version": row["version"],
        },
        "metadata": render.msgspec.json.decode(row["metadata"]) if row["metadata"] else None,
        "created_at": render.rfc3339(row["created_at"]),
    }


async def create_account(
    connection: asyncpg.Connection,
    *,
    region: str,
    currency: str,
    metadata: str | None,
    idempotency_key: str,
    request_hash: bytes,
) -> tuple[Result, dict | None, bool]:
    """(result, account, replayed). The idempotency key lives on the account row itself."""
    row = await connection.fetchrow(
        f"WITH created AS (INSERT INTO accounts (id, region, currency, kind, idempotency_key,"
        f" request_hash, metadata) VALUES ($1, $2, $3, 'player', $4, $5, $6::jsonb)"
        f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {ACCOUNT_COLUMNS}),"
        f" event AS ({account_event('account.created', 'created')})"
        f" SELECT * FROM created",
        new_account_id(region),
        region,
        currency,
        idempotency_key,
        request_hash,
        metadata,
    )
    if row is not None:
        return Result.OK, account_dict(row), False
    row = await connection.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS}, request_hash FROM accounts WHERE idempotency_key = $1",
        idempotency_key,
    )
    if row is None or bytes(row["request_hash"]) != request_hash:
        return Result.IDEMPOTENCY_CONFLICT, None, False
    return Result.OK, as_created(row), True


async def open_player_account(
    connection: asyncpg.Connection,
    region: str,
    player_id: str,
    currency: str,
    operator: str | None,
) -> str:
    """A player's wallet account, opened in the caller's transaction (identity's bind): keyed
    by the player and currency, so it is opened once whatever retries."""
    key = f"player:{player_id}:{currency}"
    metadata = {"player_id": player_id, **({"operator": operator} if operator else {})}
    result, account, _ = await create_account(
        connection,
        region=region,
        currency=currency,
        metadata=render.msgspec.json.encode(metadata).decode(),
        idempotency_key=key,
        request_hash=hashlib.sha256(key.encode()).digest(),
    )
    if result is not Result.OK:
        raise LedgerError(f"opening {key}: {result.value}")
    return account["id"]


def as_created(row) -> dict:
    """The answer a creation gave, for its replays: the row's immutable part (id, region,
    currency, kind, metadata, created_at) with the state every account is created in (active,
    empty, version 0: the table's defaults, which the INSERT above never sets). A replay
    returns the original answer, never today's balance."""
    account = account_dict(row)
    account["status"] = AccountStatus.ACTIVE.value
    account["balance"] = {
        "posted": 0,
        "pending_debits": 0,
        "pending_credits": 0,
        "available": 0,
        "version": 0,
    }
    return account


async def set_status(
    connection: asyncpg.Connection, account_id: str, status: str
) -> tuple[Result, dict | None]:
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 FOR UPDATE", account_id
        )
        if row is None:
            return Result.ACCOUNT_NOT_FOUND, None
        if row["status"] == status:
            return Result.OK, account_dict(row)
        allowed = ACCOUNT_STATUS_TRANSITIONS[AccountStatus(row["status"])]
        if row["kind"] != AccountKind.PLAYER or status not in allowed:
            return Result.ACCOUNT_STATUS_INVALID_TRANSITION, None
        if status == AccountStatus.CLOSED and (
            row["credits_posted"] != row["debits_posted"]
            or row["debits_pending"]
            or row["credits_pending"]
        ):
            return Result.ACCOUNT_HAS_BALANCE, None
        row = await connection.fetchrow(
            f"WITH changed AS (UPDATE accounts SET status = $2, version = version + 1"
            f" WHERE id = $1 RETURNING {ACCOUNT_COLUMNS}),"
            f" event AS ({account_event('account.status_changed', 'changed')})"
            f" SELECT * FROM changed",
            account_id,
            status,
        )
        return Result.OK, account_dict(row)

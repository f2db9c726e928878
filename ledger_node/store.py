"""The SQL of a batch: what it reads and locks, and the one statement that writes its decisions.

Lock order is what keeps concurrent batches (other nodes, other worker processes) free of
deadlocks: every batch locks its accounts in one ``ORDER BY id FOR UPDATE``. Pending transfers
and bet references are only ever changed by a batch that holds their accounts' locks, so reading
them after the accounts are locked gives a consistent view without locking them too.

All writes go out in one statement of data-modifying CTEs over JSON row sets: one round trip
for a whole batch, however large.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from ledger_node.operations import (
    AccountState,
    BatchState,
    BetState,
    PendingState,
    StoredKey,
)

LOCK_ACCOUNTS = """
SELECT id, kind, status, currency, debits_posted, credits_posted, debits_pending,
       credits_pending, version
FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""

PENDING_ACCOUNTS = """
SELECT id, debit_account_id, credit_account_id FROM transfers WHERE id = ANY($1::text[])
"""

ACCOUNT_CURRENCIES = "SELECT id, currency FROM accounts WHERE id = ANY($1::text[])"

READ_PENDINGS = """
SELECT id, flow, status, debit_account_id, credit_account_id, amount, currency, timeout_at,
       resolved_amount
FROM transfers WHERE id = ANY($1::text[])
"""

READ_BETS = """
SELECT b.account_id, b.reference, b.status, b.bet_transfer_id, b.rollback_transfer_id,
       t.amount AS bet_amount, t.credit_account_id AS house_account_id
FROM bets b
JOIN unnest($1::text[], $2::text[]) AS k(account_id, reference)
  ON b.account_id = k.account_id AND b.reference = k.reference
LEFT JOIN transfers t ON t.id = b.bet_transfer_id
"""

_json_encoder = msgspec.json.Encoder()

READ_KEYS = """
SELECT key, request_hash, status_code, body, result, transfer_id
FROM idempotency_keys WHERE key = ANY($1::text[])
"""

WRITE_BATCH = """
WITH new_transfers AS (
    INSERT INTO transfers (
        id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
        currency, timeout_at, reference, round_id, metadata, created_at,
        debit_posted_after, debit_debits_pending_after, debit_credits_pending_after,
        debit_version_after, credit_posted_after, credit_debits_pending_after,
        credit_credits_pending_after, credit_version_after)
    SELECT id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
           currency, timeout_at, reference, round_id, metadata, $6::timestamptz,
           dpa, ddpa, dcpa, dva, cpa, cdpa, ccpa, cva
    FROM json_to_recordset($1::json) AS r(
        id text, kind text, flow text, status text, pending_id text, debit_account_id text,
        credit_account_id text, amount bigint, currency text, timeout_at timestamptz,
        reference text, round_id text, metadata jsonb, dpa bigint, ddpa bigint, dcpa bigint,
        dva bigint, cpa bigint, cdpa bigint, ccpa bigint, cva bigint)
    RETURNING 1
), changed_accounts AS (
    UPDATE accounts a
    SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dpe,
        credits_pending = u.cpe, version = u.v
    FROM json_to_recordset($2::json)
      AS u(id text, dp bigint, cp bigint, dpe bigint, cpe bigint, v bigint)
    WHERE a.id = u.id
    RETURNING 1
), resolved_pendings AS (
    UPDATE transfers t
    SET status = u.status, resolved_amount = u.resolved_amount
    FROM json_to_recordset($3::json) AS u(id text, status text, resolved_amount bigint)
    WHERE t.id = u.id
    RETURNING 1
), changed_bets AS (
    INSERT INTO bets (account_id, reference, status, bet_transfer_id, rollback_transfer_id,
                      created_at)
    SELECT account_id, reference, status, bet_transfer_id, rollback_transfer_id,
           $6::timestamptz
    FROM json_to_recordset($4::json) AS b(account_id text, reference text, status text,
                                          bet_transfer_id text, rollback_transfer_id text)
    ON CONFLICT (account_id, reference) DO UPDATE
    SET status = EXCLUDED.status, bet_transfer_id = EXCLUDED.bet_transfer_id,
        rollback_transfer_id = EXCLUDED.rollback_transfer_id
    RETURNING 1
), new_keys AS (
    INSERT INTO idempotency_keys (key, request_hash, operation, result, transfer_id,
                                  status_code, body, created_at)
    -- body is the response's JSON text, kept byte for byte (json, not jsonb, preserves it).
    SELECT key, decode(request_hash, 'hex'), operation, result, transfer_id, status_code,
           convert_to(body::text, 'UTF8'), $6::timestamptz
    FROM json_to_recordset($5::json) AS k(key text, request_hash text, operation text,
                                          result text, transfer_id text, status_code smallint,
                                          body json)
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_transfers) AS transfers,
       (SELECT count(*) FROM changed_accounts) AS accounts,
       (SELECT count(*) FROM resolved_pendings) AS pendings,
       (SELECT count(*) FROM changed_bets) AS bets,
       (SELECT count(*) FROM new_keys) AS keys
"""


async def pending_accounts(connection: asyncpg.Connection, ids: list[str]) -> list[str]:
    rows = await connection.fetch(PENDING_ACCOUNTS, ids)
    return [account for row in rows for account in (row[1], row[2])]


async def account_currencies(connection: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
    return {row[0]: row[1] for row in await connection.fetch(ACCOUNT_CURRENCIES, ids)}


async def lock_accounts(connection: asyncpg.Connection, ids: list[str]) -> dict[str, AccountState]:
    rows = await connection.fetch(LOCK_ACCOUNTS, ids)
    return {row[0]: AccountState(*row) for row in rows}


async def read_pendings(connection: asyncpg.Connection, ids: list[str]) -> dict[str, PendingState]:
    rows = await connection.fetch(READ_PENDINGS, ids)
    return {row[0]: PendingState(*row) for row in rows}


async def read_bets(
    connection: asyncpg.Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], BetState]:
    rows = await connection.fetch(READ_BETS, [k[0] for k in keys], [k[1] for k in keys])
    return {(row[0], row[1]): BetState(*row) for row in rows}


async def read_keys(connection: asyncpg.Connection, keys: list[str]) -> dict[str, StoredKey]:
    rows = await connection.fetch(READ_KEYS, keys)
    return {row[0]: StoredKey(row[1], row[2], bytes(row[3]), row[4], row[5]) for row in rows}


def write_arguments(state: BatchState, now: datetime) -> list:
    """The six parameters of WRITE_BATCH. Rows travel as JSON documents that msgspec encodes in
    C: measured, asyncpg's per-element encoding of 43 column arrays cost a fifth of the node's
    CPU; json_to_recordset on the server is cheaper than that."""
    rows = [
        {
            "id": r.id,
            "kind": r.kind,
            "flow": r.flow,
            "status": r.status,
            "pending_id": r.pending_id,
            "debit_account_id": r.debit_account_id,
            "credit_account_id": r.credit_account_id,
            "amount": r.amount,
            "currency": r.currency,
            "timeout_at": r.timeout_at,
            "reference": r.reference,
            "round_id": r.round_id,
            "metadata": msgspec.Raw(r.metadata.encode()) if r.metadata else None,
            "dpa": r.debit_after[0],
            "ddpa": r.debit_after[1],
            "dcpa": r.debit_after[2],
            "dva": r.debit_after[3],
            "cpa": r.credit_after[0],
            "cdpa": r.credit_after[1],
            "ccpa": r.credit_after[2],
            "cva": r.credit_after[3],
        }
        for r in state.rows
    ]
    accounts = [
        {
            "id": a.id,
            "dp": a.debits_posted,
            "cp": a.credits_posted,
            "dpe": a.debits_pending,
            "cpe": a.credits_pending,
            "v": a.version,
        }
        for a in (state.accounts[account_id] for account_id in sorted(state.touched))
    ]
    pendings = [
        {"id": p.id, "status": p.status, "resolved_amount": p.resolved_amount}
        for p in state.pendings.values()
        if p.dirty
    ]
    bets = [
        {
            "account_id": b.account_id,
            "reference": b.reference,
            "status": b.status,
            "bet_transfer_id": b.bet_transfer_id,
            "rollback_transfer_id": b.rollback_transfer_id,
        }
        for b in state.bets.values()
        if b.dirty
    ]
    keys = [
        {
            "key": key,
            "request_hash": request_hash.hex(),
            "operation": name,
            "result": outcome.result.value,
            "transfer_id": outcome.transfer_id,
            "status_code": outcome.status_code,
            "body": msgspec.Raw(outcome.body),
        }
        for key, (request_hash, outcome, name) in state.new_keys.items()
    ]
    encode = _json_encoder.encode
    return [
        encode(rows).decode(),
        encode(accounts).decode(),
        encode(pendings).decode(),
        encode(bets).decode(),
        encode(keys).decode(),
        now,
    ]

"""The SQL of a batch: what it reads and locks, and the one statement that writes its decisions.

Lock order is what keeps concurrent batches (other nodes, other worker processes) free of
deadlocks: every batch locks its accounts in one ``ORDER BY id FOR UPDATE``. Pending transfers
and bet references are only ever changed by a batch that holds their accounts' locks, so reading
them after the accounts are locked gives a consistent view without locking them too.

All writes go out in one statement of data-modifying CTEs over ``unnest`` arrays: one round trip
for a whole batch, however large.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

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
           currency, timeout_at, reference, round_id, metadata::jsonb, $22::timestamptz,
           dpa, ddpa, dcpa, dva, cpa, cdpa, ccpa, cva
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::bigint[], $9::text[], $10::timestamptz[], $11::text[],
                $12::text[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[],
                $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[])
      AS r(id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount,
           currency, timeout_at, reference, round_id, metadata, dpa, ddpa, dcpa, dva, cpa,
           cdpa, ccpa, cva)
    RETURNING 1
), changed_accounts AS (
    UPDATE accounts a
    SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dpe,
        credits_pending = u.cpe, version = u.v
    FROM unnest($23::text[], $24::bigint[], $25::bigint[], $26::bigint[], $27::bigint[],
                $28::bigint[]) AS u(id, dp, cp, dpe, cpe, v)
    WHERE a.id = u.id
    RETURNING 1
), resolved_pendings AS (
    UPDATE transfers t
    SET status = u.status, resolved_amount = u.resolved_amount
    FROM unnest($29::text[], $30::text[], $31::bigint[]) AS u(id, status, resolved_amount)
    WHERE t.id = u.id
    RETURNING 1
), changed_bets AS (
    INSERT INTO bets (account_id, reference, status, bet_transfer_id, rollback_transfer_id,
                      created_at)
    SELECT account_id, reference, status, bet_transfer_id, rollback_transfer_id,
           $22::timestamptz
    FROM unnest($32::text[], $33::text[], $34::text[], $35::text[], $36::text[])
      AS b(account_id, reference, status, bet_transfer_id, rollback_transfer_id)
    ON CONFLICT (account_id, reference) DO UPDATE
    SET status = EXCLUDED.status, bet_transfer_id = EXCLUDED.bet_transfer_id,
        rollback_transfer_id = EXCLUDED.rollback_transfer_id
    RETURNING 1
), new_keys AS (
    INSERT INTO idempotency_keys (key, request_hash, operation, result, transfer_id,
                                  status_code, body, created_at)
    SELECT key, request_hash, operation, result, transfer_id, status_code, body,
           $22::timestamptz
    FROM unnest($37::text[], $38::bytea[], $39::text[], $40::text[], $41::text[],
                $42::smallint[], $43::bytea[])
      AS k(key, request_hash, operation, result, transfer_id, status_code, body)
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
    """The 43 parameters of WRITE_BATCH, column arrays built from the batch's decisions."""
    rows = state.rows
    accounts = [state.accounts[account_id] for account_id in sorted(state.touched)]
    pendings = [p for p in state.pendings.values() if p.dirty]
    bets = [b for b in state.bets.values() if b.dirty]
    keys = list(state.new_keys.items())
    return [
        [r.id for r in rows],
        [r.kind for r in rows],
        [r.flow for r in rows],
        [r.status for r in rows],
        [r.pending_id for r in rows],
        [r.debit_account_id for r in rows],
        [r.credit_account_id for r in rows],
        [r.amount for r in rows],
        [r.currency for r in rows],
        [r.timeout_at for r in rows],
        [r.reference for r in rows],
        [r.round_id for r in rows],
        [r.metadata for r in rows],
        [r.debit_after[0] for r in rows],
        [r.debit_after[1] for r in rows],
        [r.debit_after[2] for r in rows],
        [r.debit_after[3] for r in rows],
        [r.credit_after[0] for r in rows],
        [r.credit_after[1] for r in rows],
        [r.credit_after[2] for r in rows],
        [r.credit_after[3] for r in rows],
        now,
        [a.id for a in accounts],
        [a.debits_posted for a in accounts],
        [a.credits_posted for a in accounts],
        [a.debits_pending for a in accounts],
        [a.credits_pending for a in accounts],
        [a.version for a in accounts],
        [p.id for p in pendings],
        [p.status for p in pendings],
        [p.resolved_amount for p in pendings],
        [b.account_id for b in bets],
        [b.reference for b in bets],
        [b.status for b in bets],
        [b.bet_transfer_id for b in bets],
        [b.rollback_transfer_id for b in bets],
        [key for key, _ in keys],
        [value[0] for _, value in keys],
        [value[2] for _, value in keys],
        [value[1].result.value for _, value in keys],
        [value[1].transfer_id for _, value in keys],
        [value[1].status_code for _, value in keys],
        [value[1].body for _, value in keys],
    ]

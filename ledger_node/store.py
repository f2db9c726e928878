"""The SQL of a batch: what it reads and locks, and how its two round trips are made.

Lock order is what keeps concurrent batches (other nodes, other worker processes) free of
deadlocks: every batch locks its accounts in one ``ORDER BY id FOR UPDATE``. Pending transfers
and bet references are only ever changed by a batch that holds their accounts' locks, so reading
them after the accounts are locked gives a consistent view without locking them too.

A batch makes two round trips, because under load each costs far more than the server's work
(the reply waits for a busy event loop: measured 0.6 to 1.6 ms a round trip at 32 clients, for
0.1 ms of the server's time): (1) one prepared call of ``regiongate_lock_and_read`` (migration
0007), which locks the accounts in id order, reading them as it locks them, and then reads, in
statements of their own and so with fresh snapshots, the keys, the holds, the bet references,
the sagas and the saga steps; (2) every write in one statement of data-modifying CTEs over the
batch's row sets (the bulk as one array per column, the rare sets as JSON), which checks its own
row counts, then ``COMMIT`` and the next batch's ``BEGIN``, in one simple-protocol message. The
batch's transaction is thus open before the batch is even formed (an empty transaction: no
snapshot, no locks), and a connection that goes back to the pool has it rolled back. The write
is a server-side prepared statement (``PREPARE``, once per connection and shape), so the message
carries only ``EXECUTE`` and its quoted arguments: sending the statement's text itself was measured
slower, since the server then parsed and planned it each time. If the write fails, PostgreSQL
skips the rest of the message, so the COMMIT never runs.

One round trip per batch was measured and not kept (docs/decisions/0005).

The write, its one statement and the literals it travels in, is ``ledger_node.batch_write``.
"""

from __future__ import annotations

import enum
from datetime import datetime

import asyncpg
import msgspec

from ledger_node.invariants import ensure
from ledger_node.operations import (
    AccountState,
    BatchState,
    BetState,
    PendingState,
    SagaState,
    StepState,
    StoredKey,
)

PENDING_ACCOUNTS = """
SELECT id, debit_account_id, credit_account_id FROM transfers WHERE id = ANY($1::text[])
"""

ACCOUNT_CURRENCIES = "SELECT id, currency FROM accounts WHERE id = ANY($1::text[])"
_json_array = msgspec.json.Decoder(list)


LOCK_AND_READ = "SELECT tag, item FROM regiongate_lock_and_read($1, $2, $3, $4, $5, $6, $7)"


async def pending_accounts(connection: asyncpg.Connection, ids: list[str]) -> list[str]:
    rows = await connection.fetch(PENDING_ACCOUNTS, ids)
    return [account for row in rows for account in (row[1], row[2])]


async def account_currencies(connection: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
    return {row[0]: row[1] for row in await connection.fetch(ACCOUNT_CURRENCIES, ids)}


async def lock_and_read(
    connection: asyncpg.Connection,
    state: BatchState,
    account_ids: list[str],
    keys: list[str],
    pending_ids: list[str],
    bet_keys: list[tuple[str, str]],
    saga_ids: list[str],
    step_ids: list[str],
) -> None:
    """Lock the batch's accounts, then fill state with them, the stored keys, holds, bet
    references, sagas and saga steps (migration 0007). Sagas change only in batches that lock
    their debit account, saga steps only in batches that lock their transit account, so what
    this reads after the locks is current. The caller's transaction must be open: the locks
    last until its COMMIT."""
    ensure(connection.is_in_transaction(), "a batch locks only inside its transaction")
    rows = await connection.fetch(
        LOCK_AND_READ,
        account_ids,
        keys,
        pending_ids,
        [key[0] for key in bet_keys],
        [key[1] for key in bet_keys],
        saga_ids,
        step_ids,
    )
    pendings = []
    for tag, data in rows:
        values = _json_array.decode(data)
        if tag == "a":
            state.accounts[values[0]] = AccountState(*values)
        elif tag == "k":
            key, request_hash, status_code, body, result, transfer_id = values
            state.stored_keys[key] = StoredKey(
                bytes.fromhex(request_hash), status_code, body.encode(), result, transfer_id
            )
        elif tag == "p":
            if values[8] is not None:
                values[8] = datetime.fromisoformat(values[8])
            pendings.append(PendingState(*values))
        elif tag == "b":
            state.bets[(values[0], values[1])] = BetState(*values)
        elif tag == "s":
            state.sagas[values[0]] = SagaState(*values)
        else:
            state.steps[values[0]] = StepState(*values)
    # A hold created after the batch's pre-read has accounts this batch did not lock; to this
    # batch it does not exist yet (its caller could not have known its id anyway).
    state.pendings = {
        p.id: p
        for p in pendings
        if p.debit_account_id in state.accounts and p.credit_account_id in state.accounts
    }


class TransactionControl(enum.StrEnum):
    """The only transaction statements a batch writer sends. Its connection's state is the
    server's own, read from every ReadyForQuery (``is_in_transaction``), never a copy kept
    here that could drift: IDLE -> (BEGIN) -> OPEN -> (the write; COMMIT; BEGIN) -> OPEN, and
    OPEN -> (ROLLBACK) -> IDLE when a batch fails or the writer gives its connection back."""

    BEGIN = "BEGIN"
    COMMIT_AND_BEGIN = "COMMIT; BEGIN"
    ROLLBACK = "ROLLBACK"


async def open_transaction(connection: asyncpg.Connection) -> None:
    """IDLE -> OPEN, or nothing when the last COMMIT already opened the next one."""
    if not connection.is_in_transaction():
        await connection.execute(TransactionControl.BEGIN.value)
    ensure(connection.is_in_transaction(), "BEGIN left the batch's connection idle")


async def commit_and_open(connection: asyncpg.Connection, message: str | None = None) -> None:
    """OPEN -> OPEN: the batch's write (if any), COMMIT and the next batch's BEGIN in one
    message; if the write fails, the server skips the COMMIT and the error reaches the caller."""
    ensure(connection.is_in_transaction(), "a batch commits only an open transaction")
    await connection.execute(message or TransactionControl.COMMIT_AND_BEGIN.value)

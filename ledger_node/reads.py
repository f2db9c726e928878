"""Reads: an account, its balance (now or as of a past time), a transfer, and cursor-paginated
history. They never go through the batcher and never lock."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import asyncpg

from ledger_node import render
from ledger_node.accounts import ACCOUNT_COLUMNS, account_dict

TRANSFER_COLUMNS = (
    "seq, id, kind, flow, status, pending_id, debit_account_id, credit_account_id, amount, "
    "currency, resolved_amount, timeout_at, reference, round_id, metadata, created_at, "
    "debit_posted_after, debit_debits_pending_after, debit_credits_pending_after, "
    "debit_version_after, credit_posted_after, credit_debits_pending_after, "
    "credit_credits_pending_after, credit_version_after"
)

# Each side's index is scanned in order and cut at the limit, then the two are merged: the cost
# is O(limit) however long the account's history is.
HISTORY_DESC = f"""
SELECT * FROM (
  (SELECT {TRANSFER_COLUMNS} FROM transfers WHERE debit_account_id = $1 AND seq < $2
   ORDER BY seq DESC LIMIT $3)
  UNION ALL
  (SELECT {TRANSFER_COLUMNS} FROM transfers WHERE credit_account_id = $1 AND seq < $2
   ORDER BY seq DESC LIMIT $3)
) h ORDER BY seq DESC LIMIT $3
"""
HISTORY_ASC = HISTORY_DESC.replace("seq < $2", "seq > $2").replace("DESC", "ASC")

BALANCE_AS_OF = """
SELECT * FROM (
  (SELECT seq, debit_posted_after AS posted, debit_debits_pending_after AS pending_debits,
          debit_credits_pending_after AS pending_credits, debit_version_after AS version
   FROM transfers WHERE debit_account_id = $1 AND created_at <= $2 ORDER BY seq DESC LIMIT 1)
  UNION ALL
  (SELECT seq, credit_posted_after, credit_debits_pending_after, credit_credits_pending_after,
          credit_version_after
   FROM transfers WHERE credit_account_id = $1 AND created_at <= $2 ORDER BY seq DESC LIMIT 1)
) b ORDER BY seq DESC LIMIT 1
"""

SEQ_MAX = 2**63 - 1


class CursorError(ValueError):
    """A cursor that this server did not issue (or issued for another order)."""


def encode_cursor(seq: int, order: str) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        cursor_order, _, seq = text.partition(":")
        value = int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CursorError("cursor is not one this server issued") from exc
    if cursor_order != order or not 0 <= value <= SEQ_MAX:
        raise CursorError("cursor was issued for another order")
    return value


async def account(connection: asyncpg.Connection, account_id: str) -> dict | None:
    row = await connection.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id
    )
    return account_dict(row) if row else None


async def balance(
    connection: asyncpg.Connection, account_id: str, as_of: datetime | None
) -> dict | None:
    current = await account(connection, account_id)
    if current is None:
        return None
    result = {"account_id": account_id, "currency": current["currency"]}
    if as_of is None:
        return result | current["balance"] | {"as_of": None}
    row = await connection.fetchrow(BALANCE_AS_OF, account_id, as_of)
    posted, pending_debits, pending_credits, version = (
        (row["posted"], row["pending_debits"], row["pending_credits"], row["version"])
        if row
        else (0, 0, 0, 0)
    )
    return result | {
        "posted": posted,
        "pending_debits": pending_debits,
        "pending_credits": pending_credits,
        "available": posted - pending_debits,
        "version": version,
        "as_of": render.rfc3339(as_of),
    }


async def transfer(connection: asyncpg.Connection, transfer_id: str) -> dict | None:
    row = await connection.fetchrow(
        f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1", transfer_id
    )
    return render.transfer_dict(row) if row else None


async def history(
    connection: asyncpg.Connection, account_id: str, *, limit: int, cursor: str | None, order: str
) -> dict:
    if order == "desc":
        after = decode_cursor(cursor, order) if cursor else SEQ_MAX
        rows = await connection.fetch(HISTORY_DESC, account_id, after, limit)
    else:
        after = decode_cursor(cursor, order) if cursor else 0
        rows = await connection.fetch(HISTORY_ASC, account_id, after, limit)
    items = []
    for row in rows:
        side = "debit" if row["debit_account_id"] == account_id else "credit"
        item = render.transfer_dict(row)
        item["side"] = side
        item["balance_after"] = {
            "posted": row[f"{side}_posted_after"],
            "pending_debits": row[f"{side}_debits_pending_after"],
            "pending_credits": row[f"{side}_credits_pending_after"],
            "version": row[f"{side}_version_after"],
        }
        items.append(item)
    next_cursor = encode_cursor(rows[-1]["seq"], order) if len(rows) == limit else None
    return {"account_id": account_id, "items": items, "next_cursor": next_cursor}


SAGA = "SELECT * FROM sagas WHERE id = $1"
# $1 NULL: every status, the unfinished ones first (what an operator looks at first).
SAGAS = (
    "SELECT * FROM sagas WHERE $1::text IS NULL OR status = $1 "
    "ORDER BY status <> 'held', created_at LIMIT $2"
)
SAGAS_LIMIT_MAX = 1_000


async def saga(connection: asyncpg.Connection, saga_id: str) -> dict | None:
    row = await connection.fetchrow(SAGA, saga_id)
    return None if row is None else render.saga_dict(row)


async def sagas(connection: asyncpg.Connection, *, status: str | None, limit: int) -> list[dict]:
    """Sagas this region orchestrates, of one public status (pending, completed, compensated)
    or of all (None, the unfinished first), oldest first."""
    stored = (
        None
        if status is None
        else {public: stored for stored, public in render.SAGA_PUBLIC_STATUS.items()}[status]
    )
    rows = await connection.fetch(SAGAS, stored, max(1, min(limit, SAGAS_LIMIT_MAX)))
    return [render.saga_dict(row) for row in rows]

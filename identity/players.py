"""The home's side: players, their claim sagas' rows, username history and events, each change
in one transaction. The bind (a player takes the name its owner reserved) is the step that
makes a name the player's; it is a conditional update of the saga's row, so it happens at most
once, and never after the owner was told the claim was cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from identity.db import atomic
from wire.ids import ulid

OPEN_STATUSES = ("reserving", "confirming", "registering", "holding")
PLAYER_COLUMNS = (
    "id, status, username, skeleton, claim_id, owner_region, username_generated, username_refusal, "
    "display_name, "
    "operator, currencies, version, created_at, updated_at"
)
SAGA_COLUMNS = (
    "id, root_id, player_id, kind, username, skeleton, owner_region, generated, fallback, "
    "refusal, previous_claim_id, previous_owner, held_until, status, attempts, last_error, "
    "created_at, finished_at"
)

OpenAccount = Callable[[asyncpg.Connection, str, str, str | None], Awaitable[str]]
"""(connection, player id, currency, operator) -> the wallet account's id, opened in the
caller's transaction (the ledger provides it: identity never writes the ledger's tables)."""

_decode = msgspec.json.Decoder(dict[str, str]).decode


def new_claim_id() -> str:
    return f"cl_{ulid()}"


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """The name a claim asks for, decided before anything is written."""

    username: str
    skeleton: str
    owner_region: str
    generated: bool
    """A fallback drawn for the player, flagged so that a client can ask it to choose."""
    fallback: bool
    """On refusal (taken, held), go on with a generated name instead of giving up."""
    refusal: str | None = None
    """Why the preferred name was not used (a rule, or username-taken), for the answer."""


INSERT_PLAYER = f"""
INSERT INTO identity.players (id, status, display_name, operator, currencies, creation_key,
                              request_hash)
VALUES ($1, 'creating', $2, $3, $4, $5, $6)
ON CONFLICT (creation_key) DO NOTHING
RETURNING {PLAYER_COLUMNS}
"""
INSERT_SAGA = f"""
INSERT INTO identity.claim_sagas
    (id, root_id, player_id, kind, username, skeleton, owner_region, generated, fallback,
     refusal, request_key, request_hash, status, lease_owner, lease_until)
VALUES ($1, coalesce($2, $1), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'reserving', $13,
        CASE WHEN $13::text IS NULL THEN NULL
             ELSE now() + $14 * interval '1 millisecond' END)
RETURNING {SAGA_COLUMNS}
"""
PLAYER_BY_KEY = (
    f"SELECT {PLAYER_COLUMNS}, request_hash FROM identity.players WHERE creation_key = $1"
)
PLAYER = f"SELECT {PLAYER_COLUMNS} FROM identity.players WHERE id = $1"
SAGA = f"SELECT {SAGA_COLUMNS} FROM identity.claim_sagas WHERE id = $1"
SAGA_BY_KEY = (
    f"SELECT {SAGA_COLUMNS}, request_hash FROM identity.claim_sagas WHERE request_key = $1"
)
CHAIN_LATEST = f"""
SELECT {SAGA_COLUMNS} FROM identity.claim_sagas WHERE root_id = $1
ORDER BY created_at DESC, id DESC LIMIT 1
"""
OPEN_CLAIM = """
SELECT id FROM identity.claim_sagas
WHERE player_id = $1 AND status IN ('reserving', 'confirming', 'registering', 'holding')
"""
RENAMES_IN_WINDOW = """
SELECT count(*), min(created_at) FROM identity.claim_sagas
WHERE player_id = $1 AND kind = 'rename' AND id = root_id AND status <> 'refused'
  AND created_at > now() - $2 * interval '1 second'
"""
ADVANCE = f"""
UPDATE identity.claim_sagas SET status = $3, finished_at = CASE WHEN $3 = 'completed'
    THEN now() END
WHERE id = $1 AND status = $2
RETURNING {SAGA_COLUMNS}
"""
REFUSE = f"""
UPDATE identity.claim_sagas SET status = 'refused', refusal = $2, finished_at = now()
WHERE id = $1 AND status = 'reserving'
RETURNING {SAGA_COLUMNS}
"""
CANCEL = f"""
UPDATE identity.claim_sagas SET status = 'cancelled', finished_at = now()
WHERE id = $1 AND status = 'reserving'
RETURNING {SAGA_COLUMNS}
"""


_ACCOUNTS_OF_P = """(SELECT coalesce(jsonb_object_agg(currency, account_id), '{}')
        FROM identity.player_accounts WHERE player_id = p.id) AS accounts"""
PLAYER_VIEW = f"""
SELECT {PLAYER_COLUMNS}, {_ACCOUNTS_OF_P} FROM identity.players p WHERE id = $1
"""
"""A player with its accounts, in one round trip (every read of a player takes it)."""
CREATION_ANSWER = f"""
SELECT {PLAYER_COLUMNS}, {_ACCOUNTS_OF_P},
       (SELECT jsonb_build_object('username', username, 'generated', generated)
        FROM identity.claim_sagas WHERE player_id = p.id AND kind = 'create'
          AND status IN ('confirming', 'registering', 'holding', 'completed')) AS created,
       (SELECT refusal FROM identity.claim_sagas WHERE player_id = p.id AND status = 'refused'
        ORDER BY created_at DESC LIMIT 1) AS refusal
FROM identity.players p WHERE id = $1
"""


def player_view(row: Mapping, accounts: Mapping[str, str], region: str) -> dict:
    """Everything about a player, for its home, the back office and the operator's servers."""
    return {
        "id": row["id"],
        "username": row["username"],
        "username_generated": row["username_generated"],
        "username_refusal": row["username_refusal"],
        "display_name": row["display_name"],
        "status": row["status"],
        "home_region": region,
        "operator": row["operator"],
        "accounts": dict(accounts),
        "version": row["version"],
        "created_at": _rfc3339(row["created_at"]),
    }


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def read_player(connection: asyncpg.Connection, player_id: str) -> tuple[dict, dict] | None:
    row = await connection.fetchrow(PLAYER_VIEW, player_id)
    if row is None:
        return None
    return dict(row), _decode(row["accounts"])


async def start_creation(
    connection: asyncpg.Connection,
    *,
    player_id: str,
    plan: ClaimPlan,
    display_name: str | None,
    operator: str | None,
    currencies: list[str],
    creation_key: str,
    request_hash: bytes,
    lease_owner: str,
    lease_ms: int,
) -> tuple[dict | None, dict | None]:
    """(the new claim saga's row, None), or (None, the player an earlier call with this key
    made, with its request hash) for a repeat."""
    async with atomic(connection):
        player = await connection.fetchrow(
            INSERT_PLAYER,
            player_id,
            display_name,
            operator,
            currencies,
            creation_key,
            request_hash,
        )
        if player is None:
            existing = await connection.fetchrow(PLAYER_BY_KEY, creation_key)
            return None, dict(existing)
        saga = await insert_saga(
            connection,
            player_id=player_id,
            kind="create",
            plan=plan,
            lease_owner=lease_owner,
            lease_ms=lease_ms,
        )
        return saga, None


async def insert_saga(
    connection: asyncpg.Connection,
    *,
    player_id: str,
    kind: str,
    plan: ClaimPlan,
    lease_owner: str | None,
    lease_ms: int,
    root_id: str | None = None,
    request_key: str | None = None,
    request_hash: bytes | None = None,
) -> dict:
    row = await connection.fetchrow(
        INSERT_SAGA,
        new_claim_id(),
        root_id,
        player_id,
        kind,
        plan.username,
        plan.skeleton,
        plan.owner_region,
        plan.generated,
        plan.fallback,
        plan.refusal,
        request_key,
        request_hash,
        lease_owner,
        lease_ms,
    )
    return dict(row)


TAKE_NAME = """
WITH bound AS (
    UPDATE identity.claim_sagas SET status = $10 WHERE id = $4 AND status = 'reserving'
    RETURNING id
), old AS (
    SELECT p.id, p.username, p.claim_id, p.owner_region FROM identity.players p, bound
    WHERE p.id = $1 FOR UPDATE OF p
), taken AS (
    UPDATE identity.players p
    SET status = 'active', username = $2, skeleton = $3, claim_id = $4, owner_region = $5,
        username_generated = $6, username_refusal = $7, version = p.version + 1,
        updated_at = now()
    FROM old WHERE p.id = old.id
    RETURNING p.version, p.currencies, p.operator, p.display_name,
              old.username AS previous_username, old.claim_id AS previous_claim_id,
              old.owner_region AS previous_owner
), history AS (
    INSERT INTO identity.username_history (player_id, claim_id, username, skeleton, owner_region)
    SELECT $1, $4, $2, $3, $5 FROM taken
), event AS (
    INSERT INTO identity.events (id, type, aggregate_id, version, body)
    SELECT $8, $9, $1, taken.version,
           jsonb_build_object('player_id', $1::text, 'region', $11::text, 'username', $2::text,
                              'display_name', taken.display_name)
           || CASE WHEN taken.previous_username IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('previous_username', taken.previous_username) END
    FROM taken
)
SELECT * FROM taken
"""
HOLD_PREVIOUS = f"""
WITH history AS (
    UPDATE identity.username_history SET until = now(),
           held_until = now() + $3 * interval '1 second'
    WHERE claim_id = $2
)
UPDATE identity.claim_sagas SET previous_claim_id = $2, previous_owner = $4,
       held_until = now() + $3 * interval '1 second'
WHERE id = $1
RETURNING {SAGA_COLUMNS}
"""


async def bind(
    connection: asyncpg.Connection,
    saga: Mapping,
    *,
    region: str,
    held_for_s: int,
    open_account: OpenAccount,
    status_after: str = "confirming",
) -> dict | None:
    """The player takes the reserved name, in one transaction with its history, its event and
    (for a creation) its wallet accounts; the saga moves on to status_after. None if the saga
    is no longer reserving (the owner had it cancelled: the cancel started its successor).

    One statement takes the name, writes the history and the event; the wallet accounts and,
    for a rename, the previous name's history follow in the same transaction."""
    async with atomic(connection):
        taken = await connection.fetchrow(
            TAKE_NAME,
            saga["player_id"],
            saga["username"],
            saga["skeleton"],
            saga["id"],
            saga["owner_region"],
            saga["generated"],
            saga["refusal"],
            f"ev_{ulid()}",
            "player.created" if saga["kind"] == "create" else "player.username_changed",
            status_after,
            region,
        )
        if taken is None:
            return None
        if saga["kind"] == "create":
            for currency in taken["currencies"]:
                account_id = await open_account(
                    connection, saga["player_id"], currency, taken["operator"]
                )
                await connection.execute(
                    "INSERT INTO identity.player_accounts (player_id, currency, account_id) "
                    "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    saga["player_id"],
                    currency,
                    account_id,
                )
            return {**saga, "status": status_after}
        row = await connection.fetchrow(
            HOLD_PREVIOUS,
            saga["id"],
            taken["previous_claim_id"],
            held_for_s,
            taken["previous_owner"],
        )
        return {**dict(row), "status": status_after}


async def advance(connection: asyncpg.Connection, saga: Mapping, status: str) -> dict | None:
    row = await connection.fetchrow(ADVANCE, saga["id"], saga["status"], status)
    return dict(row) if row is not None else None


async def refuse(
    connection: asyncpg.Connection,
    saga: Mapping,
    refusal: str,
    *,
    fallback: Callable[[], ClaimPlan],
    lease_owner: str,
    lease_ms: int,
) -> dict | None:
    """End a claim its owner refused. A creation that may fall back goes on as a new claim of
    a generated name (returned, leased to this driver); one that may not leaves its player
    refused; a rename just ends (returns None)."""
    async with atomic(connection):
        refused = await connection.fetchrow(REFUSE, saga["id"], refusal)
        if refused is None:
            return None
        if saga["kind"] != "create":
            return None
        if not saga["fallback"]:
            await connection.execute(
                "UPDATE identity.players SET status = 'refused', updated_at = now() "
                "WHERE id = $1 AND status = 'creating'",
                saga["player_id"],
            )
            return None
        plan = fallback()
        return await insert_saga(
            connection,
            player_id=saga["player_id"],
            kind="create",
            plan=ClaimPlan(
                plan.username,
                plan.skeleton,
                plan.owner_region,
                generated=True,
                fallback=True,
                refusal=saga["refusal"] or refusal,
            ),
            lease_owner=lease_owner,
            lease_ms=lease_ms,
            root_id=saga["root_id"],
        )


async def cancel(connection: asyncpg.Connection, claim_id: str) -> str:
    """An owner asks whether a reservation it holds past its lease was bound: ``bound`` (it
    confirms it) or ``cancelled`` (it releases it; this claim is then never bound, and goes on
    as a new claim of the same name, which recovery drives)."""
    async with atomic(connection):
        cancelled = await connection.fetchrow(CANCEL, claim_id)
        if cancelled is None:
            status = await connection.fetchval(
                "SELECT status FROM identity.claim_sagas WHERE id = $1", claim_id
            )
            return (
                "bound"
                if status in ("confirming", "registering", "holding", "completed")
                else ("cancelled")
            )
        await insert_saga(
            connection,
            player_id=cancelled["player_id"],
            kind=cancelled["kind"],
            plan=ClaimPlan(
                cancelled["username"],
                cancelled["skeleton"],
                cancelled["owner_region"],
                cancelled["generated"],
                cancelled["fallback"],
                cancelled["refusal"],
            ),
            lease_owner=None,
            lease_ms=0,
            root_id=cancelled["root_id"],
        )
        return "cancelled"

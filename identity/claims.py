"""The owner's side of a claim: the claims of the identity slots this region owns, under the
primary key on the skeleton that makes look-alike names unique, and the public ids it records.

Every operation is keyed by the claim id, so a repeated call (a retry after a timeout, a second
driver after a lease ran out) answers what the first decided. Only the player's home may say
that a reservation will never be bound: an expired one is released only after the home has
answered so (identity.reaper), never on the owner's clock alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from identity.db import atomic


class ReserveOutcome(enum.StrEnum):
    RESERVED = "reserved"
    """The name is reserved for this claim (or was already: a repeat)."""
    TAKEN = "taken"
    """Another player holds the skeleton, live or reserved: refused for ever for this claim."""
    HELD = "held"
    """The skeleton is held for the player who had it before: refused."""


INSERT_RESERVATION = """
INSERT INTO identity.claims
    (skeleton, username, slot, claim_id, player_id, home_region, state, lease_until)
VALUES ($1, $2, $3, $4, $5, $6, 'reserved', now() + $7 * interval '1 millisecond')
ON CONFLICT (skeleton) DO NOTHING
RETURNING claim_id
"""
EXISTING = """
SELECT claim_id, player_id, state FROM identity.claims WHERE skeleton = $1 FOR UPDATE
"""
TAKE_BACK = """
UPDATE identity.claims
SET claim_id = $2, username = $3, state = 'reserved', held_until = NULL, attempts = 0,
    lease_until = now() + $4 * interval '1 millisecond', updated_at = now()
WHERE skeleton = $1
"""
CONFIRM = """
UPDATE identity.claims SET state = 'live', lease_until = NULL, updated_at = now()
WHERE claim_id = $1 AND state = 'reserved'
RETURNING claim_id
"""
STATE_OF = "SELECT state FROM identity.claims WHERE claim_id = $1"
HOLD = """
UPDATE identity.claims SET state = 'held', held_until = $2, lease_until = NULL, updated_at = now()
WHERE claim_id = $1 AND state IN ('live', 'reserved')
"""
RELEASE_RESERVATION = "DELETE FROM identity.claims WHERE claim_id = $1 AND state = 'reserved'"
LOOKUP = """
SELECT skeleton, username, claim_id, player_id, home_region, state, held_until
FROM identity.claims WHERE skeleton = $1
"""
REGISTER_ID = """
INSERT INTO identity.public_ids (player_id, home_region) VALUES ($1, $2)
ON CONFLICT (player_id) DO NOTHING
"""
HOME_OF = "SELECT home_region FROM identity.public_ids WHERE player_id = $1"


@dataclass(frozen=True, slots=True)
class Reservation:
    claim_id: str
    username: str
    skeleton: str
    slot: int
    player_id: str
    home_region: str


async def reserve(
    connection: asyncpg.Connection, claim: Reservation, lease_ms: int
) -> ReserveOutcome:
    """Reserve a skeleton for a claim, in one transaction: a new skeleton is inserted; one this
    claim already has answers as before; one the same player holds (a past name, or an ended
    claim's reservation) is taken over; any other owner refuses it."""
    async with atomic(connection):
        inserted = await connection.fetchval(
            INSERT_RESERVATION,
            claim.skeleton,
            claim.username,
            claim.slot,
            claim.claim_id,
            claim.player_id,
            claim.home_region,
            lease_ms,
        )
        if inserted is not None:
            return ReserveOutcome.RESERVED
        row = await connection.fetchrow(EXISTING, claim.skeleton)
        if row is None:  # released between the two statements: the next try inserts it
            return await reserve(connection, claim, lease_ms)
        if row["claim_id"] == claim.claim_id:
            return ReserveOutcome.RESERVED
        if row["player_id"] == claim.player_id and row["state"] != "live":
            # Its own past name, or a reservation of its own earlier claim, which the home has
            # ended (a home runs one claim per player at a time).
            await connection.execute(
                TAKE_BACK, claim.skeleton, claim.claim_id, claim.username, lease_ms
            )
            return ReserveOutcome.RESERVED
        return ReserveOutcome.HELD if row["state"] == "held" else ReserveOutcome.TAKEN


async def confirm(connection: asyncpg.Connection, claim_id: str) -> str | None:
    """Make a reservation live. The claim's state after it (live, or held if a later rename
    already held it), or None for a claim this owner does not have."""
    if await connection.fetchval(CONFIRM, claim_id) is not None:
        return "live"
    return await connection.fetchval(STATE_OF, claim_id)


async def hold(connection: asyncpg.Connection, claim_id: str, held_until: datetime) -> None:
    """A renamed player's previous name: held for it until held_until, then released (a claim
    already released, or never here, needs nothing)."""
    await connection.execute(HOLD, claim_id, held_until)


async def lookup(connection: asyncpg.Connection, skeleton: str) -> dict | None:
    row = await connection.fetchrow(LOOKUP, skeleton)
    return dict(row) if row is not None else None


async def register_id(connection: asyncpg.Connection, player_id: str, home_region: str) -> bool:
    """Record where a public id lives; False if the id is already another region's (the
    2**-65 collision: the creation draws another id)."""
    await connection.execute(REGISTER_ID, player_id, home_region)
    return await connection.fetchval(HOME_OF, player_id) == home_region


async def home_of(connection: asyncpg.Connection, player_id: str) -> str | None:
    return await connection.fetchval(HOME_OF, player_id)

"""Properties of the owner's claims, against real PostgreSQL: whatever claims race for names
drawn from an alphabet rich in look-alikes (o and 0, l and 1, m and rn, capitals), no two
claims of one skeleton are ever both live, and a claim is refused only when another player
holds its skeleton."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from identity import claims
from identity.claims import ReserveOutcome
from identity.migrations import IDENTITY_MIGRATIONS
from identity.usernames import UsernameRefused, UsernameRules, check
from tests.support import property_settings, unique

RULES = UsernameRules()


def _valid(raw: str):
    try:
        return check(raw, RULES)
    except UsernameRefused:
        return None


names = st.text(alphabet="aolmOLM01rn", min_size=3, max_size=5).map(_valid).filter(bool)
racing = st.lists(st.tuples(st.integers(0, 4), names), min_size=1, max_size=24)


@pytest.fixture(scope="module")
def identity_dsn(postgres):
    dsn = postgres.create_database(unique("identity_props").replace("-", "_")[:40])

    async def migrate() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await IDENTITY_MIGRATIONS.apply(connection)
        finally:
            await connection.close()

    asyncio.run(migrate())
    return dsn


@property_settings(40)
@given(attempts=racing)
def test_no_two_claims_of_a_skeleton_are_ever_both_live(identity_dsn, attempts):
    asyncio.run(_race(identity_dsn, attempts))


async def _race(dsn: str, attempts) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    try:
        async with pool.acquire() as connection:
            await connection.execute("TRUNCATE identity.claims")
        reservations = [
            claims.Reservation(f"cl_{i}", name.canonical, name.skeleton, 0, f"pl_{player}", "eu")
            for i, (player, name) in enumerate(attempts)
        ]

        async def reserve(reservation):
            async with pool.acquire() as connection:
                return await claims.reserve(connection, reservation, 60_000)

        async def confirm(reservation):
            async with pool.acquire() as connection:
                return await claims.confirm(connection, reservation.claim_id)

        outcomes = await asyncio.gather(*(reserve(r) for r in reservations))
        confirmed = await asyncio.gather(*(confirm(r) for r in reservations))
        async with pool.acquire() as connection:
            rows = {
                r["skeleton"]: dict(r)
                for r in await connection.fetch(
                    "SELECT skeleton, claim_id, player_id, state FROM identity.claims"
                )
            }
    finally:
        await pool.close()
    live_by_skeleton: dict[str, list[str]] = {}
    for reservation, outcome, state in zip(reservations, outcomes, confirmed, strict=True):
        row = rows.get(reservation.skeleton)
        assert row is not None  # every skeleton asked for is someone's
        if state == "live":
            live_by_skeleton.setdefault(reservation.skeleton, []).append(reservation.claim_id)
            assert row["claim_id"] == reservation.claim_id
        if outcome is not ReserveOutcome.RESERVED:
            # refused only for a skeleton another player holds
            assert row["player_id"] != reservation.player_id, (reservation, row)
    assert all(len(ids) == 1 for ids in live_by_skeleton.values()), live_by_skeleton
    assert set(live_by_skeleton) == set(rows)

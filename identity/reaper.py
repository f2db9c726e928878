"""The owner's clean-up, on a schedule: held names past their period are released, and every
reservation whose lease ran out is settled by asking the player's home. The home answers
``bound`` (the confirm was lost on the way: confirm it here) or ``cancelled`` (it will never
bind: release it); until it answers, the reservation stays, so a name is never given away on
this owner's clock alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from identity import claims
from identity.config import IdentityConfig
from identity.observability import REAPED, RESERVATIONS_UNSETTLED
from runtime.sagas import DATABASE_ERRORS

log = logging.getLogger("regiongate.identity.reaper")

RELEASE_HELD = """
DELETE FROM identity.claims WHERE skeleton IN (
    SELECT skeleton FROM identity.claims WHERE state = 'held' AND held_until < now()
    ORDER BY held_until LIMIT $1 FOR UPDATE SKIP LOCKED)
"""
EXPIRED = """
UPDATE identity.claims
SET attempts = attempts + 1,
    lease_until = now()
        + least($2 * power(2, least(attempts, 10)), $3) * interval '1 millisecond'
WHERE claim_id IN (
    SELECT claim_id FROM identity.claims WHERE state = 'reserved' AND lease_until < now()
    ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING claim_id, home_region
"""
UNSETTLED = """
SELECT count(*) FROM identity.claims
WHERE state = 'reserved' AND created_at < now() - ($1 + 60000) * interval '1 millisecond'
"""
ASK_BACKOFF_BASE_MS = 500

AskHome = Callable[[str, str], Awaitable[str | None]]
"""(home region, claim id) -> 'bound', 'cancelled', or None when the home did not answer."""


class Reaper:
    def __init__(self, pool: asyncpg.Pool, config: IdentityConfig, ask_home: AskHome) -> None:
        self._pool = pool
        self._config = config
        self._ask_home = ask_home
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="identity-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def run_once(self) -> dict[str, int]:
        counts = {"released_held": 0, "confirmed": 0, "released_reservation": 0}
        limit = self._config.reaper_batch_max
        async with self._pool.acquire() as connection:
            status = await connection.execute(RELEASE_HELD, limit)
            counts["released_held"] = int(status.split()[-1])
            expired = await connection.fetch(
                EXPIRED, limit, ASK_BACKOFF_BASE_MS, self._config.reservation_lease_ms
            )
        answers = await asyncio.gather(
            *(self._ask_home(row["home_region"], row["claim_id"]) for row in expired)
        )
        async with self._pool.acquire() as connection:
            for row, answer in zip(expired, answers, strict=True):
                if answer == "bound":
                    await claims.confirm(connection, row["claim_id"])
                    counts["confirmed"] += 1
                elif answer == "cancelled":
                    await connection.execute(claims.RELEASE_RESERVATION, row["claim_id"])
                    counts["released_reservation"] += 1
            RESERVATIONS_UNSETTLED.set(
                await connection.fetchval(UNSETTLED, self._config.reservation_lease_ms)
            )
        for action, count in counts.items():
            if count:
                REAPED.labels(action).inc(count)
        return counts

    async def _loop(self) -> None:
        while True:
            try:
                counts = await self.run_once()
                if any(counts.values()):
                    log.info("identity clean-up: %s", counts)
            except DATABASE_ERRORS as exc:
                log.warning("identity clean-up failed: %s", exc)
            await asyncio.sleep(self._config.reaper_interval_ms / 1000)

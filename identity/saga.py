"""The claim saga: a username becomes a player's in three steps, driven from the player's home.

1. **reserve** at the owner of the name's slot: the owner's primary key on the skeleton refuses
   a second claim of a look-alike name;
2. **bind** at home, in one local transaction: the player takes the name (and, when new, its
   wallet accounts), with its history row and its event. The request that started the claim is
   answered here: the reservation already keeps the name from anyone else;
3. **confirm** at the owner: the reservation becomes live; then, for a new player, **register**
   its public id at the owner of the id's slot (so any gateway can find its home), or, for a
   rename, **hold** the previous name at its owner for ``held_for_s``.

A creation whose name's slot this region owns thus answers without a WAN round trip; one whose
owner is remote, after one.

Why no crash or cut leaves two owners of a name or a player without one: the owner never
gives a skeleton to two claims (primary key); the home binds a claim at most once (a
conditional update of its row) and a player changes names only by binding; and an owner
releases an unconfirmed reservation only after the home has said it was not bound, in the
same transaction that makes sure it never will be (identity.players.cancel). Every call is
idempotent by the claim id, so an unknown outcome is retried, never guessed, and the recovery
worker (runtime.sagas) resumes any claim whose driver died, from its row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime

import asyncpg
import msgspec

from identity import claims, players
from identity.claims import ReserveOutcome
from identity.config import IdentityConfig
from identity.db import atomic
from identity.observability import (
    CLAIM_OUTCOMES,
    CLAIM_STEP_SECONDS,
    CLAIMS_OVERDUE,
    CLAIMS_RUNNING,
)
from identity.usernames import Username, fallback
from region_router.directory import Directory
from region_router.errors import RouterError
from region_router.router import RegionRouter
from runtime.sagas import DATABASE_ERRORS, CrashPoints, SagaRunner, backoff_ms
from wire.ids import identity_slot

log = logging.getLogger("regiongate.identity.saga")

CRASH_AT_ENV = "REGIONGATE_CLAIM_CRASH_AT"
CRASH_POINTS = CrashPoints(CRASH_AT_ENV, frozenset({"reserved", "bound", "confirmed"}))

CLAIM = f"""
UPDATE identity.claim_sagas
SET lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond'
WHERE id = $1 AND status IN ('reserving', 'confirming', 'registering', 'holding')
  AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now())
RETURNING {players.SAGA_COLUMNS}
"""
RECORD_ATTEMPT = """
UPDATE identity.claim_sagas SET attempts = attempts + 1, last_error = $3,
       next_attempt_at = now() + $4 * interval '1 millisecond',
       lease_until = now() + ($4 + $5) * interval '1 millisecond'
WHERE id = $1 AND status IN ('reserving', 'confirming', 'registering', 'holding')
  AND lease_owner = $2
"""
DUE = """
SELECT id FROM identity.claim_sagas
WHERE status IN ('reserving', 'confirming', 'registering', 'holding') AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
ORDER BY next_attempt_at LIMIT $1
"""
RELEASE = """
UPDATE identity.claim_sagas SET lease_until = now()
WHERE lease_owner = $1 AND status IN ('reserving', 'confirming', 'registering', 'holding')
"""
OVERDUE_AFTER_S = 60
COUNT_OVERDUE = """
SELECT count(*) FROM identity.claim_sagas
WHERE status IN ('reserving', 'confirming', 'registering', 'holding')
  AND created_at < now() - $1 * interval '1 second'
"""
STEP_PATH = "/v1/identity-steps/{action}"
_decode = msgspec.json.Decoder()


class Unknown(Exception):
    """A step's outcome is not known (timeout, cut link, an answer that is not a step's)."""


class ClaimDriver:
    """Drives claim sagas of the players homed here, on the shared runner."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        router: RegionRouter,
        directory: Directory,
        region: str,
        config: IdentityConfig,
        owner: str,
        open_account: players.OpenAccount,
    ) -> None:
        self._pool = pool
        self._router = router
        self._directory = directory
        self._region = region
        self._config = config
        self.owner = owner
        self._open_account = open_account
        self.runner = SagaRunner(
            name="claim",
            config=config.claim,
            drive_one=self._drive,
            due=self._due,
            release=self._release,
            after_pass=self._count_overdue,
        )
        self._bound: dict[str, asyncio.Future] = {}
        """Root claim id -> what a request waiting for its player's name awaits."""
        CLAIMS_RUNNING.set_function(lambda: self.runner.running)

    async def wait_bound(self, saga: Mapping, timeout_s: float) -> None:
        """Drive a claim this process has just started, and wait up to timeout_s until its
        player has a name: bound (the rest, confirm and record or hold, runs on behind the
        answer: the owner's reservation already keeps the name from anyone else), or ended."""
        task = self.runner.drive(saga["id"], saga)
        if task is None or timeout_s <= 0 or saga["status"] != "reserving":
            return  # not driven here, or bound already (in one local transaction)
        root = saga["root_id"]
        bound = self._bound.setdefault(root, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait({task, bound}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            if self._bound.get(root) is bound:
                del self._bound[root]

    def _signal_bound(self, root_id: str) -> None:
        waiter = self._bound.get(root_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def owner_of(self, key: str) -> str | None:
        """The region owning the identity slot of a skeleton or a public id."""
        return self._directory.snapshot().slot_owner(identity_slot(key))

    def plan(self, name: Username, *, generated: bool, fallback: bool, refusal=None):
        owner = self.owner_of(name.skeleton)
        if owner is None:
            return None
        return players.ClaimPlan(
            name.canonical, name.skeleton, owner, generated, fallback, refusal and str(refusal)
        )

    def fallback_plan(self) -> players.ClaimPlan:
        plan = self.plan(fallback(self._config.rules), generated=True, fallback=True)
        if plan is None:
            raise Unknown("the directory assigns no identity slots")
        return plan

    async def _due(self, limit: int) -> list[str]:
        async with self._pool.acquire() as connection:
            return [row["id"] for row in await connection.fetch(DUE, limit)]

    async def _count_overdue(self) -> None:
        async with self._pool.acquire() as connection:
            CLAIMS_OVERDUE.set(await connection.fetchval(COUNT_OVERDUE, OVERDUE_AFTER_S))

    async def _release(self) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(RELEASE, self.owner)

    async def _drive(self, saga_id: str, started: Mapping | None) -> dict | None:
        saga = dict(started) if started is not None else None
        if saga is None:
            try:
                async with self._pool.acquire() as connection:
                    row = await connection.fetchrow(
                        CLAIM, saga_id, self.owner, self._config.claim.lease_ms
                    )
            except DATABASE_ERRORS as exc:
                log.warning("claim %s: cannot take it now (%s); recovery will retry", saga_id, exc)
                return None
            if row is None:
                return None  # ended, or another node holds its lease
            saga = dict(row)
        attempt = saga["attempts"]
        while saga["status"] in players.OPEN_STATUSES:
            try:
                next_saga = await self._step(saga)
            except (Unknown, *DATABASE_ERRORS) as exc:
                attempt += 1
                delay_ms = backoff_ms(self._config.claim, attempt)
                log.info("claim %s: %s; again in %.0f ms", saga["id"], exc, delay_ms)
                if not await self._record_attempt(saga["id"], str(exc)[:500], delay_ms):
                    return None
                await asyncio.sleep(delay_ms / 1000)
                continue
            if next_saga is None:
                return None  # the owner had it cancelled, or another driver moved it on
            if next_saga["id"] != saga["id"]:
                attempt = 0
            saga = next_saga
        CLAIM_OUTCOMES.labels(saga["kind"], saga["status"]).inc()
        return saga

    async def _step(self, saga: dict) -> dict | None:
        started = asyncio.get_running_loop().time()
        status = saga["status"]
        try:
            if status == "reserving":
                return await self._reserve_and_bind(saga)
            if status == "confirming":
                state = await self._call(
                    saga["owner_region"],
                    "confirm",
                    {"claim_id": saga["id"]},
                    lambda connection: claims.confirm(connection, saga["id"]),
                )
                if state.get("state") not in ("live", "held"):
                    # The owner has no such claim: it can only have released it after this
                    # home said it was cancelled, which a bound claim never says. A bug.
                    log.error("claim %s: owner answered %s", saga["id"], state)
                    raise Unknown(f"confirm: owner answered {state}")
                CRASH_POINTS.reached("confirmed")
                return await self._advance(saga, self._after_confirm(saga))
            if status == "registering":
                id_owner = self.owner_of(saga["player_id"])
                if id_owner is None:
                    raise Unknown("the directory assigns no identity slots")
                answer = await self._call(
                    id_owner,
                    "register",
                    {"player_id": saga["player_id"], "home_region": self._region},
                    lambda connection: claims.register_id(
                        connection, saga["player_id"], self._region
                    ),
                )
                if answer.get("registered") is not True:
                    # Another region's player has this id: a 2**-65 event, never resolved by
                    # retrying. Loud, and the claims-overdue alert follows.
                    log.error("claim %s: public id %s is taken", saga["id"], saga["player_id"])
                    raise Unknown(f"register: {answer}")
                return await self._advance(saga, "completed")
            # holding
            await self._call(
                saga["previous_owner"],
                "hold",
                {"claim_id": saga["previous_claim_id"], "held_until": saga["held_until"]},
                lambda connection: claims.hold(
                    connection, saga["previous_claim_id"], saga["held_until"]
                ),
            )
            return await self._advance(saga, "completed")
        finally:
            CLAIM_STEP_SECONDS.labels(status).observe(asyncio.get_running_loop().time() - started)

    def _after_confirm(self, saga: Mapping) -> str:
        if saga["kind"] == "create":
            return "registering"
        return "holding" if saga["previous_claim_id"] else "completed"

    async def claim_locally(self, connection: asyncpg.Connection, saga: Mapping) -> dict | None:
        """A claim whose name's slot this region owns, in one transaction: reserve, bind and
        confirm together (and for a new player whose id's slot is here too, its record), so
        no step can be lost between them. The saga's row after it; None when the name is
        refused (the caller goes on with the refusal) or the claim was no longer reserving."""
        async with atomic(connection):
            outcome = await claims.reserve(
                connection, self._reservation(saga), self._config.reservation_lease_ms
            )
            if outcome != ReserveOutcome.RESERVED:
                return None
            await claims.confirm(connection, saga["id"])
            following = self._after_confirm(saga)
            if following == "registering" and self.owner_of(saga["player_id"]) == self._region:
                if await claims.register_id(connection, saga["player_id"], self._region):
                    following = "completed"
            bound = await players.bind(
                connection,
                saga,
                region=self._region,
                held_for_s=self._config.held_for_s,
                open_account=self._open_account,
                status_after=following if saga["kind"] == "create" else "confirming",
            )
            if bound is None:
                return None
            if bound["kind"] == "create":
                return bound
            following = self._after_confirm(bound)
            if following == "holding" and bound["previous_owner"] == self._region:
                await claims.hold(connection, bound["previous_claim_id"], bound["held_until"])
                following = "completed"
            return await players.advance(connection, bound, following)

    def _reservation(self, saga: Mapping) -> claims.Reservation:
        return claims.Reservation(
            claim_id=saga["id"],
            username=saga["username"],
            skeleton=saga["skeleton"],
            slot=identity_slot(saga["skeleton"]),
            player_id=saga["player_id"],
            home_region=self._region,
        )

    async def _reserve_and_bind(self, saga: dict) -> dict | None:
        if saga["owner_region"] == self._region:
            async with self._pool.acquire() as connection:
                done = await self.claim_locally(connection, saga)
            if done is not None:
                self._signal_bound(saga["root_id"])
                return done
        reservation = self._reservation(saga)
        answer = await self._call(
            saga["owner_region"],
            "reserve",
            {
                "claim_id": saga["id"],
                "username": saga["username"],
                "player_id": saga["player_id"],
                "home_region": self._region,
            },
            lambda connection: claims.reserve(
                connection, reservation, self._config.reservation_lease_ms
            ),
        )
        outcome = answer.get("outcome")
        if outcome == ReserveOutcome.RESERVED:
            CRASH_POINTS.reached("reserved")
            async with self._pool.acquire() as connection:
                bound = await players.bind(
                    connection,
                    saga,
                    region=self._region,
                    held_for_s=self._config.held_for_s,
                    open_account=self._open_account,
                )
            if bound is not None:
                self._signal_bound(saga["root_id"])
                CRASH_POINTS.reached("bound")
            return bound
        if outcome in (ReserveOutcome.TAKEN, ReserveOutcome.HELD):
            refusal = f"username-{outcome}"
            async with self._pool.acquire() as connection:
                successor = await players.refuse(
                    connection,
                    saga,
                    refusal,
                    fallback=self.fallback_plan,
                    lease_owner=self.owner,
                    lease_ms=self._config.claim.lease_ms,
                )
            if successor is not None:
                return successor
            async with self._pool.acquire() as connection:
                row = await connection.fetchrow(players.SAGA, saga["id"])
            return dict(row) if row is not None and row["status"] == "refused" else None
        raise Unknown(f"reserve: owner answered {answer}")

    async def _advance(self, saga: dict, status: str) -> dict | None:
        async with self._pool.acquire() as connection:
            return await players.advance(connection, saga, status)

    async def _call(self, region: str, action: str, body: dict, local) -> dict:
        """One step at an owner: ``local(connection)`` in this process's database when this
        region owns the slot (no HTTP hop), else ``body`` over the router, signed, with the
        claim id as idempotency key; the same answer either way (step_answer)."""
        if region == self._region:
            async with self._pool.acquire() as connection:
                return step_answer(action, await local(connection))
        wire_body = dict(body)
        if isinstance(wire_body.get("held_until"), datetime):
            wire_body["held_until"] = wire_body["held_until"].isoformat()
        try:
            response = await self._router.call_in_region(
                region,
                "POST",
                STEP_PATH.format(action=action),
                wire_body,
                idempotency_key=body.get("claim_id") or body.get("player_id"),
            )
        except (RouterError, TimeoutError) as exc:
            raise Unknown(f"{action} at {region}: {type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise Unknown(f"{action} at {region}: HTTP {response.status}")
        try:
            answer = _decode.decode(response.body)
        except msgspec.DecodeError as exc:
            raise Unknown(f"{action} at {region}: not JSON") from exc
        if not isinstance(answer, dict):
            raise Unknown(f"{action} at {region}: not a step answer")
        return answer

    async def _record_attempt(self, saga_id: str, detail: str, delay_ms: float) -> bool:
        """Keep the attempt on the claim's row and renew the lease; False if the lease is lost."""
        try:
            async with self._pool.acquire() as connection:
                status = await connection.execute(
                    RECORD_ATTEMPT,
                    saga_id,
                    self.owner,
                    detail,
                    delay_ms,
                    self._config.claim.lease_ms,
                )
        except DATABASE_ERRORS as exc:
            log.warning("claim %s: cannot record attempt (%s)", saga_id, exc)
            return True
        return status.endswith(" 1")


def step_answer(action: str, result) -> dict:
    """A step's answer, the same whether it ran here or at another region's node."""
    if action == "reserve":
        return {"outcome": str(result)}
    if action == "register":
        return {"registered": bool(result)}
    if action == "confirm":
        return {"state": result}
    if action == "hold":
        return {"state": "held"}
    return {"state": result}  # cancel

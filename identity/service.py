"""Identity as a region node serves it: the home of its players (creations, renames, reads),
the owner of its identity slots (claims, public ids, lookups), the claim saga's driver and the
owner's clean-up. Built and started by the node that hosts it, on that node's database pool and
router to peer regions; it writes only identity's own tables, and wallet accounts only through
the ``open_account`` the ledger hands it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from identity import claims, players
from identity.config import IdentityConfig
from identity.reaper import Reaper
from identity.saga import STEP_PATH, ClaimDriver, Unknown, step_answer
from identity.usernames import UsernameRefused, UsernameRule, check
from region_router.directory import Directory
from region_router.errors import RouterError
from region_router.router import RegionRouter
from wire.ids import identity_slot, new_player_id
from wire.problems import ProblemError
from wire.results import (
    CLAIM_IN_PROGRESS,
    IDENTITY_UNAVAILABLE,
    PLAYER_NOT_FOUND,
    PROBLEMS,
    RENAME_RATE_LIMITED,
    SLOT_NOT_OWNED,
    USERNAME_HELD,
    USERNAME_INVALID,
    USERNAME_RESERVED,
    USERNAME_TAKEN,
    VALIDATION_FAILED,
    Result,
)

log = logging.getLogger("regiongate.identity")
OPEN_CLAIM_POLL_S = 0.02
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def refusal_problem(refusal: UsernameRefused) -> ProblemError:
    """A refused name as the API says it: reserved words have their own type."""
    if refusal.rule is UsernameRule.RESERVED:
        return ProblemError(USERNAME_RESERVED, refusal.detail, rule=refusal.rule.value)
    return ProblemError(USERNAME_INVALID, refusal.detail, rule=refusal.rule.value)


def request_hash(name: str, body: object) -> bytes:
    return hashlib.sha256(name.encode() + b"\0" + _encode(body)).digest()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict
    replayed: bool = False


class IdentityService:
    def __init__(
        self,
        *,
        config: IdentityConfig,
        region: str,
        pool: asyncpg.Pool,
        router: RegionRouter,
        directory: Directory,
        owner: str,
        open_account: players.OpenAccount,
        peer_key_ids: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.region = region
        self.pool = pool
        self.peer_key_ids = peer_key_ids
        self._router = router
        self._directory = directory
        self.driver = ClaimDriver(
            pool=pool,
            router=router,
            directory=directory,
            region=region,
            config=config,
            owner=owner,
            open_account=open_account,
        )
        self.reaper = Reaper(pool, config, self._ask_home)

    def start(self) -> None:
        self.driver.runner.start()
        self.reaper.start()

    async def stop(self) -> None:
        await self.reaper.stop()
        await self.driver.runner.stop()

    # -- the home of players --------------------------------------------------------------

    async def create_player(
        self,
        *,
        username: str | None,
        username_required: bool,
        display_name: str | None,
        operator: str | None,
        currencies: list[str],
        creation_key: str,
        body_hash: bytes,
    ) -> Answer:
        """A new player, its public id, its username and its wallet accounts: the claim saga
        runs now and is waited for up to claim.wait_ms (then 202: the player is ``creating``
        and its row says the rest)."""
        refusal = None
        try:
            name = check(username, self.config.rules) if username is not None else None
        except UsernameRefused as exc:
            if username_required:
                raise refusal_problem(exc) from exc
            name, refusal = None, exc.rule.value
        if name is None and username_required:
            raise ProblemError(USERNAME_INVALID, "a username is required", rule="empty")
        if name is None:
            plan = self.driver.fallback_plan() if self._slots_assigned() else None
        else:
            plan = self.driver.plan(name, generated=False, fallback=not username_required)
        if plan is None:
            raise ProblemError(IDENTITY_UNAVAILABLE, "the directory assigns no identity slots")
        if refusal is not None:
            plan = players.ClaimPlan(
                plan.username, plan.skeleton, plan.owner_region, True, True, refusal
            )
        if not self.driver.runner.has_room():
            raise ProblemError(IDENTITY_UNAVAILABLE, "too many claims in flight", retry_after_s=1)
        async with self.pool.acquire() as connection, connection.transaction():
            saga, existing = await players.start_creation(
                connection,
                player_id=new_player_id(),
                plan=plan,
                display_name=display_name,
                operator=operator,
                currencies=currencies,
                creation_key=creation_key,
                request_hash=body_hash,
                lease_owner=self.driver.owner,
                lease_ms=self.config.claim.lease_ms,
            )
            if saga is not None and plan.owner_region == self.region:
                # The name's slot is this region's: the whole claim commits with the player,
                # in one transaction (a refused name goes on in the claim, as any other).
                saga = await self.driver.claim_locally(connection, saga) or saga
        if existing is not None:
            if bytes(existing["request_hash"]) != body_hash:
                raise ProblemError(PROBLEMS[Result.IDEMPOTENCY_CONFLICT])
            return await self._creation_answer(existing["id"], replayed=True)
        await self.driver.wait_bound(saga, self.config.claim.wait_ms / 1000)
        return await self._creation_answer(saga["player_id"], replayed=False)

    async def _creation_answer(self, player_id: str, *, replayed: bool) -> Answer:
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(players.CREATION_ANSWER, player_id)
        if row["status"] == "refused":
            held = row["refusal"] == "username-held"
            raise ProblemError(USERNAME_HELD if held else USERNAME_TAKEN, "nothing was created")
        view = players.player_view(row, _decode(row["accounts"]), self.region)
        if row["status"] == "creating":
            return Answer(202, view, replayed)
        # A replay answers what the creation answered: the name and version it had then.
        created = _decode(row["created"])
        view.update(
            username=created["username"], version=1, username_generated=created["generated"]
        )
        return Answer(201, view, replayed)

    async def rename(
        self, player_id: str, username: str, *, request_key: str, body_hash: bytes
    ) -> Answer:
        try:
            name = check(username, self.config.rules)
        except UsernameRefused as exc:
            raise refusal_problem(exc) from exc
        plan = self.driver.plan(name, generated=False, fallback=False)
        if plan is None:
            raise ProblemError(IDENTITY_UNAVAILABLE, "the directory assigns no identity slots")
        await self._await_open_claim(player_id)
        async with self.pool.acquire() as connection:
            previous = await connection.fetchrow(players.SAGA_BY_KEY, request_key)
            if previous is not None:
                if bytes(previous["request_hash"]) != body_hash:
                    raise ProblemError(PROBLEMS[Result.IDEMPOTENCY_CONFLICT])
                return await self._rename_answer(connection, previous["root_id"], replayed=True)
            player = await connection.fetchrow(players.PLAYER, player_id)
            if player is None or player["status"] != "active":
                raise ProblemError(PLAYER_NOT_FOUND)
            if player["skeleton"] == name.skeleton:
                if player["username"] == name.canonical:
                    view = await self._view(connection, player_id)
                    return Answer(200, view)
                raise ProblemError(USERNAME_TAKEN, "this name looks like the player's own")
            count, oldest = await connection.fetchrow(
                players.RENAMES_IN_WINDOW, player_id, self.config.rename_window_s
            )
            if count >= self.config.renames_max:
                wait_s = self.config.rename_window_s
                if oldest is not None:
                    now = await connection.fetchval("SELECT now()")
                    wait_s = self.config.rename_window_s - int((now - oldest).total_seconds())
                raise ProblemError(
                    RENAME_RATE_LIMITED,
                    f"at most {self.config.renames_max} renames per "
                    f"{self.config.rename_window_s} s",
                    retry_after_s=max(1, wait_s),
                )
            try:
                saga = await players.insert_saga(
                    connection,
                    player_id=player_id,
                    kind="rename",
                    plan=plan,
                    lease_owner=self.driver.owner,
                    lease_ms=self.config.claim.lease_ms,
                    request_key=request_key,
                    request_hash=body_hash,
                )
            except asyncpg.UniqueViolationError as exc:
                if "claim_sagas_one_open" in str(exc):
                    raise ProblemError(CLAIM_IN_PROGRESS, retry_after_s=1) from exc
                previous = await connection.fetchrow(players.SAGA_BY_KEY, request_key)
                return await self._rename_answer(connection, previous["root_id"], replayed=True)
        await self.driver.wait_bound(saga, self.config.claim.wait_ms / 1000)
        async with self.pool.acquire() as connection:
            return await self._rename_answer(connection, saga["root_id"], replayed=False)

    async def _await_open_claim(self, player_id: str) -> None:
        """A player's previous claim finishes its last steps (confirm, record, hold) just after
        its answer; a rename that follows at once waits for them, up to claim.wait_ms, rather
        than answering claim-in-progress to a client that did nothing wrong."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.claim.wait_ms / 1000
        while (remaining := deadline - loop.time()) > 0:
            async with self.pool.acquire() as connection:
                open_id = await connection.fetchval(players.OPEN_CLAIM, player_id)
            if open_id is None:
                return
            task = self.driver.runner.drive(open_id)
            if task is not None:
                await asyncio.wait({task}, timeout=remaining)
            else:
                await asyncio.sleep(min(remaining, OPEN_CLAIM_POLL_S))

    async def _rename_answer(self, connection, root_id: str, *, replayed: bool) -> Answer:
        latest = await connection.fetchrow(players.CHAIN_LATEST, root_id)
        if latest["status"] == "refused":
            problem = USERNAME_HELD if latest["refusal"] == "username-held" else USERNAME_TAKEN
            raise ProblemError(problem, "the player keeps its name")
        view = await self._view(connection, latest["player_id"])
        view["claim"] = {
            "id": latest["id"],
            "status": latest["status"],
            "username": latest["username"],
        }
        return Answer(202 if latest["status"] == "reserving" else 200, view, replayed)

    async def _view(self, connection, player_id: str) -> dict | None:
        found = await players.read_player(connection, player_id)
        if found is None:
            return None
        return players.player_view(*found, self.region)

    async def player(self, player_id: str) -> dict:
        async with self.pool.acquire() as connection:
            view = await self._view(connection, player_id)
        if view is None or view["status"] != "active":
            raise ProblemError(PLAYER_NOT_FOUND)
        return view

    async def cancel_claim(self, claim_id: str) -> str:
        async with self.pool.acquire() as connection:
            return await players.cancel(connection, claim_id)

    # -- the owner of identity slots ------------------------------------------------------

    def _slots_assigned(self) -> bool:
        return bool(self._directory.snapshot().slot_owners)

    def check_owned(self, key: str, field: str) -> None:
        """Refuse a step for a slot another region owns (the slot moved, or a caller's
        directory is stale): answering it here could give a name two owners."""
        owner = self._directory.snapshot().slot_owner(identity_slot(key))
        if owner != self.region:
            raise ProblemError(
                SLOT_NOT_OWNED, f"identity slot owned by {owner}, not {self.region}", field=field
            )

    async def lookup(self, username: str) -> dict | None:
        try:
            name = check(username, self.config.rules)
        except UsernameRefused as exc:
            raise refusal_problem(exc) from exc
        self.check_owned(name.skeleton, "username")
        async with self.pool.acquire() as connection:
            claim = await claims.lookup(connection, name.skeleton)
        if claim is None:
            return None
        return {
            "state": claim["state"],
            "username": claim["username"],
            "player_id": claim["player_id"],
            "home_region": claim["home_region"],
            "held_until": claim["held_until"].isoformat() if claim["held_until"] else None,
        }

    async def view(self, username: str) -> dict | None:
        """The active player who has this username as far as this region knows, without
        asking any other region: its view of every region's players (its own included), kept
        from their events, so a moment behind. None: not known here (the caller asks the
        name's owner)."""
        try:
            name = check(username, self.config.rules)
        except UsernameRefused as exc:
            raise refusal_problem(exc) from exc
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT player_id, home_region, username, display_name, version"
                " FROM identity.player_views WHERE skeleton = $1 AND status = 'active'"
                " ORDER BY updated_at DESC LIMIT 1",
                name.skeleton,
            )
        return None if row is None else dict(row)

    async def locate(self, player_id: str) -> str | None:
        self.check_owned(player_id, "player_id")
        async with self.pool.acquire() as connection:
            return await claims.home_of(connection, player_id)

    async def step(self, action: str, body: dict) -> dict:
        """A claim step another region's driver (or this region's reaper) asks for."""
        try:
            if action == "cancel":
                return {"state": await self.cancel_claim(_text(body, "claim_id"))}
            if action == "register":
                player_id = _text(body, "player_id")
                self.check_owned(player_id, "player_id")
                async with self.pool.acquire() as connection:
                    registered = await claims.register_id(
                        connection, player_id, _text(body, "home_region")
                    )
                return step_answer(action, registered)
            if action == "reserve":
                name = check(_text(body, "username"), self.config.rules)
                self.check_owned(name.skeleton, "username")
                reservation = claims.Reservation(
                    claim_id=_text(body, "claim_id"),
                    username=name.canonical,
                    skeleton=name.skeleton,
                    slot=identity_slot(name.skeleton),
                    player_id=_text(body, "player_id"),
                    home_region=_text(body, "home_region"),
                )
                async with self.pool.acquire() as connection:
                    outcome = await claims.reserve(
                        connection, reservation, self.config.reservation_lease_ms
                    )
                return step_answer(action, outcome)
            async with self.pool.acquire() as connection:
                if action == "confirm":
                    return step_answer(
                        action, await claims.confirm(connection, _text(body, "claim_id"))
                    )
                held_until = datetime.fromisoformat(_text(body, "held_until"))
                await claims.hold(connection, _text(body, "claim_id"), held_until)
                return step_answer(action, None)
        except UsernameRefused as exc:
            raise refusal_problem(exc) from exc
        except ValueError as exc:
            raise ProblemError(VALIDATION_FAILED, str(exc)) from exc

    async def _ask_home(self, home_region: str, claim_id: str) -> str | None:
        """For the reaper: was this claim bound at its home?"""
        if home_region == self.region:
            return await self.cancel_claim(claim_id)
        try:
            response = await self._router.call_in_region(
                home_region,
                "POST",
                STEP_PATH.format(action="cancel"),
                {"claim_id": claim_id},
                idempotency_key=claim_id,
            )
        except (RouterError, TimeoutError, Unknown) as exc:
            log.info("claim %s: home %s did not answer (%s)", claim_id, home_region, exc)
            return None
        if response.status != 200:
            return None
        state = response.json().get("state")
        return state if state in ("bound", "cancelled") else None


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        raise ValueError(f"{name} must be a string of 1 to 256 characters")
    return value

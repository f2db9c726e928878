"""A ledger node's lifecycle: connect, migrate, load reference data, run the batcher and the
expiry task, and stop in order (stop taking work, finish the queue, close the pools)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

import asyncpg

from events.api import WebhooksContext
from events.relay import Relay
from events.webhooks import Webhooks
from identity.migrations import IDENTITY_MIGRATIONS
from identity.service import IdentityService
from ledger_node.accounts import open_player_account, sync_reference_data
from ledger_node.batcher import Batcher
from ledger_node.config import LedgerConfig
from ledger_node.errors import ConfigError, LedgerError, map_database_error
from ledger_node.invariants import ensure
from ledger_node.migrations import apply_migrations, schema_is_current
from ledger_node.operations import Flow, ResolvePending
from ledger_node.player_views import PlayerViews
from ledger_node.saga import SagaDriver
from region_router.backends import build_directory
from region_router.directory import Directory, RegionStatus
from region_router.http_pool import HttpPool
from region_router.router import RegionRouter, RouterConfig
from runtime.sagas import new_owner_id
from wire.ids import region_of
from wire.service_auth import ServiceKeyring

log = logging.getLogger("regiongate.ledger.node")

READINESS_TIMEOUT_S = 2.0

DUE_PENDINGS = """
SELECT id FROM transfers WHERE status = 'pending' AND timeout_at <= now()
ORDER BY timeout_at LIMIT $1
"""


async def _reset_connection(connection: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool. asyncpg's default reset (unlock
    advisory locks, close cursors, unlisten, RESET ALL) costs a round trip on every release,
    measured on every read and before every batch; these pools never take advisory locks,
    open cursors, LISTEN or SET, so only a transaction left open needs ending."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class NodeState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class LedgerNode:
    def __init__(self, config: LedgerConfig, keyring: ServiceKeyring) -> None:
        self.config = config
        self.keyring = keyring
        self.state = NodeState.CREATED
        self.pool: asyncpg.Pool | None = None
        self.batch_pool: asyncpg.Pool | None = None
        self.batcher: Batcher | None = None
        self.sagas: SagaDriver | None = None
        self.identity: IdentityService | None = None
        self.relay: Relay | None = None
        self.webhooks: Webhooks | None = None
        self.player_views: PlayerViews | None = None
        self._directory: Directory | None = None
        self._peer_pool: HttpPool | None = None
        self._expiry_task: asyncio.Task | None = None

    async def _create_pool(self, size_max: int, extra_settings: dict | None = None) -> asyncpg.Pool:
        database = self.config.database
        return await asyncpg.create_pool(
            database.dsn,
            reset=_reset_connection,
            password=database.password(),
            min_size=1,
            max_size=size_max,
            timeout=database.connect_timeout_ms / 1000,
            command_timeout=database.statement_timeout_ms / 1000 + 1,
            server_settings={
                "statement_timeout": str(database.statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(database.statement_timeout_ms * 2),
                "application_name": f"regiongate-ledger-{self.config.region}",
                **(extra_settings or {}),
            },
        )

    async def start(self) -> None:
        ensure(self.state is NodeState.CREATED, f"cannot start a node that is {self.state}")
        try:
            # Writers only ever look rows up by primary key or unique index. On fresh, fast-
            # growing tables the planner's statistics lag (autovacuum analyses once a minute at
            # best) and a cached plan may pick a sequential scan that grows with the table:
            # measured at 1.2-2.9 ms per batch for 32 key lookups, against 0.25 ms by index.
            self.batch_pool = await self._create_pool(
                self.config.batch.writers,
                # Batch messages carry literals quoted for standard strings: never let a server
                # default change what a backslash means.
                # The batch statements never change shape, so plan them once (a custom plan per
                # execution cost 0.3-0.5 ms of server CPU per batch).
                {
                    "enable_seqscan": "off",
                    "standard_conforming_strings": "on",
                    "plan_cache_mode": "force_generic_plan",
                },
            )
            self.pool = await self._create_pool(self.config.database.pool_size_max)
            async with self.batch_pool.acquire() as connection:
                applied = await apply_migrations(connection)
                if applied:
                    log.info("applied migrations %s", applied)
                applied = await IDENTITY_MIGRATIONS.apply(connection)
                if applied:
                    log.info("applied identity migrations %s", applied)
                await sync_reference_data(connection, self.config)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._close_pools()
            raise map_database_error(exc) from exc
        self.batcher = Batcher(
            pool=self.batch_pool,
            region=self.config.region,
            config=self.config.batch,
            outbox=self.config.events.outbox,
        )
        self.batcher.start()
        events = self.config.events
        if events.redis_url and events.relay:
            self.relay = Relay(
                self.config.database.dsn,
                self.config.database.password(),
                self.config.region,
                events,
            )
            self.relay.start()
        if events.redis_url and events.player_views:
            regions = sorted({self.config.region, *self.config.peers})
            self.player_views = PlayerViews(self.pool, self.config.region, regions, events)
            await self.player_views.start()
        if events.redis_url and events.webhooks.enabled:
            self.webhooks = Webhooks(
                self.config.database.dsn,
                self.config.database.password(),
                self.config.region,
                events,
            )
            self.webhooks.start()
        if self.config.directory_file or self.config.consul:
            try:
                await self._start_sagas()
            except BaseException:
                # An unreadable directory must not leave the batcher and the pools running.
                self.state = NodeState.RUNNING
                await self.stop()
                raise
        self._expiry_task = asyncio.get_running_loop().create_task(
            self._expire_loop(), name="ledger-expiry"
        )
        self.state = NodeState.RUNNING

    async def _start_sagas(self) -> None:
        """The saga orchestrator: a router to peer regions' ledgers over a keep-alive pool
        (a saga's steps cost one WAN round trip each, never a new connection), and the
        recovery worker that resumes unfinished sagas, starting with those of a crashed run."""
        saga = self.config.saga
        self._directory = build_directory(self.config.directory_file, self.config.consul)
        await self._directory.start()
        self._peer_pool = HttpPool(connections_per_origin_max=256)
        key = self.keyring.signing_key
        if self.config.peer_key_ids:
            key = self.keyring.get(self.config.peer_key_ids[0])
            if key is None:
                raise ConfigError(f"peer key {self.config.peer_key_ids[0]!r} is not in the keyring")
        router = RegionRouter(
            directory=self._directory,
            key=key,
            pool=self._peer_pool,
            config=RouterConfig(
                local_region=self.config.region,
                attempt_timeout_ms=saga.step_timeout_ms,
                call_timeout_ms=saga.step_timeout_ms,
                retries_max=1,
                eject_for_ms=max(10, min(5_000, saga.retry_backoff_cap_ms)),
            ),
        )
        self.sagas = SagaDriver(
            pool=self.pool,
            batcher=self.batcher,
            router=router,
            region=self.config.region,
            config=saga,
            owner=new_owner_id(self.config.region),
        )
        self.sagas.start()
        self.identity = IdentityService(
            config=self.config.identity,
            region=self.config.region,
            pool=self.pool,
            router=router,
            directory=self._directory,
            owner=self.sagas.owner,
            open_account=self._open_player_account,
            peer_key_ids=self.config.peer_key_ids,
        )
        self.identity.start()

    async def _open_player_account(self, connection, player_id, currency, operator) -> str:
        return await open_player_account(
            connection, self.config.region, player_id, currency, operator
        )

    async def stop(self) -> None:
        if self.state is not NodeState.RUNNING:
            return
        self.state = NodeState.STOPPING
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        if self.identity is not None:
            await self.identity.stop()
        if self.sagas is not None:
            await self.sagas.stop()
        if self._peer_pool is not None:
            await self._peer_pool.close()
        if self._directory is not None:
            await self._directory.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.player_views is not None:
            await self.player_views.stop()
        await self._close_pools()
        self.state = NodeState.STOPPED

    async def _close_pools(self) -> None:
        for pool in (self.batch_pool, self.pool):
            if pool is not None:
                await pool.close()

    def webhooks_context(self) -> WebhooksContext | None:
        """What the webhook routes need: none until the node runs."""
        if self.pool is None:
            return None
        return WebhooksContext(
            self.pool, self.config.events.webhooks, self.config.region, self.webhooks
        )

    def home_region(self, account_id: str) -> str | None:
        """An account's home region: the directory's re-home override first, else its id."""
        if self._directory is not None:
            return self._directory.snapshot().home_region(account_id)
        return region_of(account_id)

    def region_is_down(self, region: str) -> bool:
        """Whether the directory marks a region down (then nothing can be confirmed there)."""
        if self._directory is None:
            return False
        record = self._directory.snapshot().regions.get(region)
        return record is not None and record.status is RegionStatus.DOWN

    async def ready(self) -> tuple[bool, str]:
        """Readiness: running, the database answers, and the schema is current."""
        if self.state is not NodeState.RUNNING or self.pool is None:
            return False, f"node is {self.state.value}"
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_S):
                async with self.pool.acquire() as connection:
                    if not await schema_is_current(
                        connection
                    ) or not await IDENTITY_MIGRATIONS.is_current(connection):
                        return False, "schema migrations are not complete"
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return False, f"database unreachable: {type(exc).__name__}"
        return True, "ok"

    async def expire_due(self) -> int:
        """Expire every hold past its timeout, up to expiry_batch_max; return how many."""
        ensure(self.pool is not None and self.batcher is not None, "node not started")
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(DUE_PENDINGS, self.config.expiry_batch_max)
        futures = [
            self.batcher.submit(
                ResolvePending(row["id"], Flow.EXPIRE),
                idempotency_key=None,
                request_hash=b"",
                name="expire",
            )
            for row in rows
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return sum(1 for outcome in outcomes if getattr(outcome, "status_code", 0) == 201)

    async def _expire_loop(self) -> None:
        interval_s = self.config.expiry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                expired = await self.expire_due()
                if expired:
                    log.info("expired %d pending transfers", expired)
            except (LedgerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("expiry pass failed: %s", exc)

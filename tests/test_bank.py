"""The bank test: a seeded, time-bounded workload of intra- and cross-region transfers among a
fixed set of players in three regions, while faults are injected: ledger nodes killed with
SIGKILL and restarted, links between regions cut and healed, slowed or reset, and a PostgreSQL
restart in one region. Each region has its own PostgreSQL cluster, as in production.

The regions publish their events (relay in each node, a durable Redis that the faults also
kill -9 and restart): a consumer group reads every region's transfer stream and applies each
event through an inbox in a database of its own, and an https receiver is every region's
webhook endpoint for transfer events.

After the load stops and the faults heal, every request whose outcome the client never learned
is retried with its key until it has a final answer. Then: every player's balance is exactly
what the final answers say it should be (so every acknowledged transfer is there exactly once,
and nothing else is); no hold is left; no player is below zero; every saga has ended; the
cross-region audit is clean, which includes per currency the total over all regions being zero
and one event per transfer; every committed transfer's event was applied exactly once and no
other (none of a batch that rolled back), per account in increasing versions; and the webhook
receiver got every transfer's event, each signature valid, per account in order.

``REGIONGATE_BANK_SECONDS`` sets the load's duration (default 20, at most 120 in CI);
``REGIONGATE_BANK_SEED`` replays a seed. The schedule of choices (payers, payees, amounts,
faults and their targets) replays exactly; their timing against the servers cannot.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import time
from dataclasses import dataclass, field

import asyncpg
import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from events.consumer import INBOX_SCHEMA, Consumer, ConsumerConfig, inbox_first
from events.streams import Event, stream_name
from infra.services import RedisServer, free_port
from infra.tls import ensure_dev_certificates
from region_router.http_pool import UpstreamConnectionError
from region_router.ledger_client import LedgerClient
from tests.support import (
    SERVICE_KEYS_TEXT,
    SagaWorld,
    assert_eventually,
    balance,
    fund,
    new_player,
    unique,
)
from wire.ids import is_system_account_id

REGIONS = ("eu", "us", "ap")
PLAYERS_PER_REGION = 4
FUNDED = 10_000
CLIENTS = 12
LOAD_SECONDS = min(float(os.environ.get("REGIONGATE_BANK_SECONDS", "20")), 3600.0)
SEED = int(os.environ.get("REGIONGATE_BANK_SEED", str(random.SystemRandom().randrange(10**6))))
FAULT_GAP_S = (0.6, 1.4)


@dataclass
class Request:
    key: str
    body: dict
    cross: bool
    final: str | None = None
    """'applied' or 'refused' once known; None while the outcome is unknown."""


@dataclass
class Bank:
    clients: dict[str, LedgerClient]
    players: list[str]
    requests: list[Request] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    async def send(self, request: Request) -> None:
        """Send (or resend) a request; record its final outcome if the answer says it."""
        payer_region = request.body["debit_account_id"].split("-", 1)[0]
        path = "/v1/sagas" if request.cross else "/v1/transfers"
        try:
            response = await self.clients[payer_region].post(
                path, request.body, idempotency_key=request.key, timeout_s=5
            )
        except (UpstreamConnectionError, TimeoutError):
            return
        request.final = _final_of(response.status, response.json())


def _final_of(status: int, payload) -> str | None:
    if status == 201:
        return "applied"
    if status == 202:
        return None  # a saga still running
    if status in (409, 422) and isinstance(payload, dict):
        if payload.get("code") == "idempotency_conflict":
            raise AssertionError(f"a resent request conflicted with itself: {payload}")
        return "refused"
    return None  # 503 (node or database away), 502, 421...


async def _load(bank: Bank, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set():
        payer, payee = rng.sample(bank.players, 2)
        request = Request(
            unique("bank"),
            {
                "debit_account_id": payer,
                "credit_account_id": payee,
                "amount": rng.randint(1, 1_500),
                "currency": "EUR",
            },
            cross=payer.split("-", 1)[0] != payee.split("-", 1)[0],
        )
        bank.requests.append(request)  # recorded before it is sent: its outcome may be lost
        await bank.send(request)
        if request.final is None:
            await asyncio.sleep(0.05)


async def _faults(world: SagaWorld, bank: Bank, rng: random.Random, stop: asyncio.Event) -> None:
    pg_restarted = False
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(*FAULT_GAP_S))
        region = rng.choice(REGIONS)
        peer = rng.choice([r for r in REGIONS if r != region])
        kinds = ["kill", "cut", "slow", "reset", "kill", "cut", "redis"]
        kind = rng.choice(kinds + ([] if pg_restarted else ["pg"]))
        link = kind in ("cut", "slow", "reset")
        bank.faults.append(f"{kind} {region}" + (f"/{peer}" if link else ""))
        if kind == "redis":  # the event streams' Redis, kill -9 and back on its files
            redis_server = world.events_redis
            redis_server.process.kill()
            redis_server.process.wait()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(redis_server.start)
        elif kind == "kill":
            world.kill(region)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            await asyncio.to_thread(world.restart, region)
        elif kind == "cut":
            world.link(region, peer, "cut")
            await asyncio.sleep(rng.uniform(0.3, 2.5))  # sometimes past a saga's deadline
            world.link(region, peer, "heal")
        elif kind == "reset":
            world.link(region, peer, "drop_connections")  # every open connection reset at once
        elif kind == "slow":
            world.link(region, peer, "set_delay", rng.choice([50, 150, 400]))
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            world.link(region, peer, "set_delay", 0)
        else:
            pg_restarted = True
            await asyncio.to_thread(world.clusters[region].stop, "immediate")
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(world.clusters[region].start)


class EventWatch:
    """What the event pipeline delivered: each region's transfer stream read by a consumer group
    that applies every event through an inbox (its own database), and the webhook receiver."""

    def __init__(self, redis_url: str, dsn: str, tls) -> None:
        self.redis_url = redis_url
        self.dsn = dsn
        self.tls = tls
        self.applied: dict[str, list[int]] = {}
        """Account -> its versions, in the order their events were first applied."""
        self.hooks: list[tuple[str, dict, bytes]] = []
        self.port = free_port()
        self._tasks: list[asyncio.Task] = []
        self._clients: list = []
        self._pool = None
        self._runner = None

    @property
    def hook_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        from aiohttp import web

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        await self._pool.execute(INBOX_SCHEMA)
        await self._pool.execute(
            "CREATE TABLE applied (event_id text PRIMARY KEY, transfer_id text NOT NULL)"
        )
        for region in REGIONS:
            client = aioredis.from_url(self.redis_url, socket_timeout=5)
            self._clients.append(client)
            consumer = Consumer(
                client,
                [stream_name(region, "transfer")],
                "bank-audit",
                f"watch-{region}",
                self._apply,
                ConsumerConfig(visibility_timeout_ms=2_000, block_ms=100),
                ordered=True,
            )
            self._tasks.append(asyncio.create_task(consumer.run()))

        async def hook(request):
            self.hooks.append(
                (request.match_info["region"], dict(request.headers), await request.read())
            )
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hooks/{region}", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def _apply(self, event: Event) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            if not await inbox_first(connection, "bank-audit", event.id):
                return
            await connection.execute(
                "INSERT INTO applied VALUES ($1, $2)", event.id, event.data["transfer_id"]
            )
        for side in ("debit", "credit"):
            account = event.data[f"{side}_account_id"]
            version = event.data[f"{side}_balance_after"]["version"]
            self.applied.setdefault(account, []).append(version)

    async def applied_transfers(self) -> list[str]:
        return [r["transfer_id"] for r in await self._pool.fetch("SELECT transfer_id FROM applied")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        for client in self._clients:
            await client.aclose()
        if self._pool is not None:
            await self._pool.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
def world(postgres, own_services_dir):
    events_redis = RedisServer(own_services_dir / "events-redis", free_port(), durable=True)
    events_redis.start()
    tls = ensure_dev_certificates(own_services_dir / "tls")
    world = SagaWorld(
        own_services_dir / "bank",
        postgres,
        SERVICE_KEYS_TEXT,
        regions=REGIONS,
        own_postgres=True,
        saga={"deadline_ms": 2_000, "step_timeout_ms": 500},
        events={
            "redis_url": events_redis.url,
            "poll_interval_ms": 5,
            "webhooks": {
                "ca_file": str(tls.ca_cert),
                "allow_private_addresses": True,  # the receiver is on 127.0.0.1
                "retry_schedule_s": [1] * 20,
            },
        },
    )
    world.events_redis = events_redis
    world.tls = tls
    world.start()
    yield world
    world.stop()
    events_redis.stop()


@pytest.mark.timeout(LOAD_SECONDS + 300)
async def test_bank_under_faults_conserves_money(world, keyring, ledger_pool, postgres):
    print(f"bank test seed {SEED} (replay: REGIONGATE_BANK_SEED={SEED})")
    rng = random.Random(SEED)
    clients = {r: LedgerClient(world.url(r), keyring.signing_key, ledger_pool) for r in REGIONS}
    watch = EventWatch(
        world.events_redis.url,
        postgres.create_database(unique("watch").replace("-", "_")),
        world.tls,
    )
    await watch.start()
    secrets = {}
    for region in REGIONS:
        response = await clients[region].post(
            "/v1/webhook-endpoints",
            {"url": f"{watch.hook_url.removesuffix('/hooks')}/hooks/{region}",
             "event_types": ["transfer.*"]},
        )  # fmt: skip
        assert response.status == 201, response.body
        secrets[region] = response.json()["secret"]
    try:
        await _bank(world, clients, rng, watch, secrets)
    finally:
        await watch.stop()


async def _bank(world, clients, rng, watch: EventWatch, secrets: dict) -> None:
    players = []
    for region in REGIONS:
        for _ in range(PLAYERS_PER_REGION):
            player = await new_player(clients[region])
            await fund(clients[region], player, FUNDED)
            players.append(player)
    bank = Bank(clients, players)
    stop = asyncio.Event()
    loads = [
        asyncio.create_task(_load(bank, random.Random(rng.random()), stop)) for _ in range(CLIENTS)
    ]
    faults = asyncio.create_task(_faults(world, bank, random.Random(rng.random()), stop))
    started = time.monotonic()
    await asyncio.sleep(LOAD_SECONDS)  # the load's duration: the test's subject, not a wait
    stop.set()
    await asyncio.gather(*loads, faults)
    elapsed_s = time.monotonic() - started
    for region in REGIONS:  # heal everything; every node runs
        for peer in REGIONS:
            if peer != region:
                world.wan.call(f"{region}>{peer}", "heal")
                world.wan.call(f"{region}>{peer}", "set_delay", 0)
        if not world.ledgers[region].alive():
            world.restart(region)
    context = (
        f"seed {SEED}: {len(bank.requests)} requests in {elapsed_s:.0f}s, faults {bank.faults}"
    )

    async def all_final() -> bool:
        unknown = [request for request in bank.requests if request.final is None]
        await asyncio.gather(*(bank.send(request) for request in unknown[:200]))
        return all(request.final is not None for request in bank.requests)

    await assert_eventually(all_final, timeout_s=90, interval_s=0.5)
    await assert_eventually(lambda: _sagas_ended(world), timeout_s=30)

    expected = dict.fromkeys(players, FUNDED)
    for request in bank.requests:
        if request.final == "applied":
            expected[request.body["debit_account_id"]] -= request.body["amount"]
            expected[request.body["credit_account_id"]] += request.body["amount"]
    actual = {}
    for player in players:
        shown = await balance(clients[player.split("-", 1)[0]], player)
        assert shown["pending_debits"] == 0, (player, shown, context)
        actual[player] = shown["posted"]
    assert actual == expected, context
    assert sum(actual.values()) == FUNDED * len(players), context
    applied = sum(1 for request in bank.requests if request.final == "applied")
    cross = sum(1 for r in bank.requests if r.cross and r.final == "applied")
    assert applied > 50 and cross > 10, f"the load barely ran: {context}"
    failures = await world.audit(grace_s=5)
    assert not failures, (failures, context)
    await _events_delivered(world, watch, secrets, context)
    print(f"{context}; applied {applied} ({cross} across regions)")


async def _events_delivered(world, watch: EventWatch, secrets: dict, context: str) -> None:
    """Every committed transfer's event applied exactly once and nothing else, per account in
    version order; and delivered to the webhook receiver, signed, per account in order."""
    committed = set()
    for region in REGIONS:
        connection = await asyncpg.connect(world.dsns[region])
        try:
            committed |= {r["id"] for r in await connection.fetch("SELECT id FROM transfers")}
        finally:
            await connection.close()

    async def consumed() -> bool:
        return set(await watch.applied_transfers()) >= committed

    await assert_eventually(consumed, timeout_s=60, interval_s=0.5)
    applied = await watch.applied_transfers()
    assert len(applied) == len(set(applied)) and set(applied) == committed, context
    for account, versions in watch.applied.items():
        assert versions == sorted(versions) and len(set(versions)) == len(versions), (
            account, versions, context,
        )  # fmt: skip

    def hooked() -> dict[str, dict]:
        first = {}
        for region, headers, body in watch.hooks:
            first.setdefault(headers["webhook-id"], (region, headers, body))
        return first

    async def all_hooked() -> bool:
        seen = {json.loads(body)["data"]["transfer_id"] for _, _, body in hooked().values()}
        return seen >= committed

    try:
        await assert_eventually(all_hooked, timeout_s=90, interval_s=0.5)
    except AssertionError:
        states = {}
        for region in REGIONS:
            connection = await asyncpg.connect(world.dsns[region])
            try:
                states[region] = [
                    dict(r)
                    for r in await connection.fetch(
                        "SELECT status, count(*), max(attempts), min(last_error) AS error"
                        " FROM webhook_deliveries GROUP BY status"
                    )
                ]
            finally:
                await connection.close()
        seen = {json.loads(body)["data"]["transfer_id"] for _, _, body in hooked().values()}
        raise AssertionError(
            f"webhooks: {len(committed - seen)} of {len(committed)} transfers not delivered;"
            f" deliveries {states}; {context}"
        ) from None
    order: dict[str, list[int]] = {}
    for region, headers, body in watch.hooks:
        Webhook(secrets[region]).verify(body, headers)
    for _, _, body in hooked().values():
        event = json.loads(body)
        for side in ("debit", "credit"):
            order.setdefault(event["data"][f"{side}_account_id"], []).append(
                event["data"][f"{side}_balance_after"]["version"]
            )
    for account, versions in order.items():
        # Webhooks keep the order of player accounts (events.webhooks.order_keys: the house,
        # clearing and transit accounts are in every other transfer, so not in line).
        if not is_system_account_id(account):
            assert versions == sorted(versions), (account, versions, context)


async def _sagas_ended(world: SagaWorld) -> bool:
    return await world.unfinished_sagas() == 0

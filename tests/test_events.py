"""The event pipeline against real PostgreSQL and a durable Redis: the outbox rows a ledger node
writes with its changes, the relay's order (a transaction that commits after a later-numbered
one is not skipped), its paging through a backlog, trimming, and the consumer library (stuck
entries taken over, dead letters, the inbox)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict

import asyncpg
import pytest
import redis.asyncio as aioredis

from events.config import EventsConfig
from events.consumer import INBOX_SCHEMA, Consumer, ConsumerConfig, inbox_first
from events.relay import RELAY_NAME, publish, relay_once, trim_streams
from events.streams import Event, dead_letter_stream, from_fields, stream_name
from infra.services import RedisServer, free_port
from tests.support import fund, ledger_config, new_player, start_ledger, unique


@pytest.fixture(scope="module")
def events_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-events"), free_port(), durable=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(events_redis):
    client = aioredis.from_url(events_redis.url)
    await client.flushall()
    yield client
    await client.aclose()


class StandIn:
    """The relay's config and housekeeping for relay_once, without a Relay's task."""

    def __init__(self, **config) -> None:
        self.config = EventsConfig(redis_url="redis://unused", **config)
        self.blocked = False

    async def housekeeping(self, connection, prev) -> None:
        return None


async def read_all(redis, region: str, family: str) -> list[Event]:
    entries = await redis.xrange(stream_name(region, family), "-", "+")
    return [from_fields(fields) for _, fields in entries]


async def drain(connection, redis, region: str, relay) -> int:
    total = 0
    while True:
        published = await relay_once(connection, redis, region, relay)
        total += published
        state = await connection.fetchrow(
            "SELECT cur FROM outbox_relay WHERE name = $1", RELAY_NAME
        )
        if not published and state["cur"] is None:
            return total


@pytest.fixture
async def node_with_events(fresh_dsn, keyring, events_redis, redis_client, loop_errors):
    config = ledger_config(
        fresh_dsn,
        events={"redis_url": events_redis.url, "poll_interval_ms": 5, "trim_interval_s": 0.2},
    )
    node, server = await start_ledger(config, keyring)
    yield node, server, fresh_dsn
    await server.close()
    await node.stop()


async def test_each_change_publishes_one_event_in_account_order(
    node_with_events, ledger_pool, keyring, redis_client
):
    from region_router.ledger_client import LedgerClient

    _, server, _ = node_with_events
    client = LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)
    alice, bob = await new_player(client), await new_player(client)
    await fund(client, alice, 1_000)
    transfers = []
    for amount in (100, 200, 300):
        response = await client.post(
            "/v1/transfers",
            {"debit_account_id": alice, "credit_account_id": bob, "amount": amount,
             "currency": "EUR"},
            idempotency_key=unique("t"),
        )  # fmt: skip
        assert response.status == 201
        transfers.append(response.json()["id"])
    hold = await client.post(
        "/v1/transfers",
        {"debit_account_id": alice, "credit_account_id": bob, "amount": 50, "currency": "EUR",
         "pending": True, "timeout_s": 60},
        idempotency_key=unique("h"),
    )  # fmt: skip
    assert hold.status == 201, hold.body
    posted = await client.post(
        f"/v1/transfers/{hold.json()['id']}/post", {}, idempotency_key=unique("p")
    )
    assert posted.status in (200, 201), posted.body

    async def published():
        events = await read_all(redis_client, "eu", "transfer")
        return events if len(events) >= 6 else None

    for _ in range(200):
        events = await published()
        if events:
            break
        await asyncio.sleep(0.05)
    assert events, "the relay published the transfers' events"
    types = [e.type for e in events if e.data["debit_account_id"] == alice]
    assert types == ["transfer.posted"] * 3 + ["transfer.pending", "transfer.posted_from_pending"]
    ids = [e.data["transfer_id"] for e in events]
    assert len(ids) == len(set(ids)) == 6  # the funding, three transfers, the hold, its post
    versions = defaultdict(list)
    for event in events:
        for side in ("debit", "credit"):
            account = event.data[f"{side}_account_id"]
            versions[account].append(event.data[f"{side}_balance_after"]["version"])
    for account in (alice, bob):
        assert versions[account] == sorted(versions[account])
        assert len(set(versions[account])) == len(versions[account])
    created = await read_all(redis_client, "eu", "account")
    assert {e.aggregate_id for e in created if e.type == "account.created"} >= {alice, bob}


async def test_a_transaction_committing_after_a_later_numbered_one_is_published(
    fresh_dsn, keyring, events_redis, redis_client
):
    """The pitfall of polling outboxes by sequence number: a long transaction takes seq 1,
    a short one seq 2 and commits; a relay that moved its cursor past 2 would never see 1."""
    config = ledger_config(fresh_dsn, events={"redis_url": events_redis.url, "relay": False})
    node, server = await start_ledger(config, keyring)  # migrates the database
    await server.close()
    await node.stop()
    long = await asyncpg.connect(fresh_dsn)
    short = await asyncpg.connect(fresh_dsn)
    relay_connection = await asyncpg.connect(fresh_dsn)
    relay = StandIn()
    insert = (
        "INSERT INTO outbox (family, type, ref, aggregate_id, version, body)"
        " VALUES ('account', 'account.created', $1, $1, $2, '{}') RETURNING seq"
    )
    try:
        await long.execute("BEGIN")
        first = await long.fetchval(insert, "eu-long", 1)
        second = await short.fetchval(insert, "eu-short", 1)
        assert first < second
        assert await drain(relay_connection, redis_client, "eu", relay) == 1
        await long.execute("COMMIT")
        assert await drain(relay_connection, redis_client, "eu", relay) == 1
        events = await read_all(redis_client, "eu", "account")
        assert [e.aggregate_id for e in events] == ["eu-short", "eu-long"]
        # A rolled-back transaction's row is never published.
        await long.execute("BEGIN")
        await long.fetchval(insert, "eu-rolled-back", 1)
        await long.execute("ROLLBACK")
        assert await drain(relay_connection, redis_client, "eu", relay) == 0
    finally:
        for connection in (long, short, relay_connection):
            await connection.close()


async def test_a_backlog_is_published_in_pages_from_its_checkpoint(
    fresh_dsn, keyring, events_redis, redis_client
):
    config = ledger_config(fresh_dsn, events={"redis_url": events_redis.url, "relay": False})
    node, server = await start_ledger(config, keyring)
    await server.close()
    await node.stop()
    connection = await asyncpg.connect(fresh_dsn)
    try:
        await connection.execute(
            "INSERT INTO outbox (family, type, ref, aggregate_id, version, body)"
            " SELECT 'account', 'account.status_changed', 'eu-a' || (n % 50), 'eu-a' || (n % 50),"
            " n, '{}' FROM generate_series(1, 5000) AS n"
        )
        relay = StandIn(page_rows=400)
        assert await relay_once(connection, redis_client, "eu", relay) == 400
        after = await connection.fetchval(
            "SELECT after FROM outbox_relay WHERE name = $1", RELAY_NAME
        )
        assert '"outbox"' in after  # the checkpoint of the page it published
        # A relay that dies here resumes from that checkpoint: at most the page goes twice.
        assert await drain(connection, redis_client, "eu", relay) == 4600
        events = await read_all(redis_client, "eu", "account")
        assert len(events) == 5000
        per_account = defaultdict(list)
        for event in events:
            per_account[event.aggregate_id].append(event.version)
        assert all(v == sorted(v) for v in per_account.values())
    finally:
        await connection.close()


async def test_trimming_keeps_what_a_group_has_not_read(redis_client):
    config = EventsConfig(redis_url="redis://unused", stream_keep_min=10, stream_len_max=1_000)
    stream = stream_name("eu", "account")
    events = [
        Event(id=f"ev_{n}", type="account.created", region="eu", aggregate_type="account",
              aggregate_id="eu-x", version=n, time="2026-01-01T00:00:00Z", data={})
        for n in range(100)
    ]  # fmt: skip
    await publish(redis_client, "eu", events[:50])
    await redis_client.xgroup_create(stream, "slow", "0")
    read = await redis_client.xreadgroup("slow", "c1", {stream: ">"}, count=20)
    assert len(read[0][1]) == 20
    await publish(redis_client, "eu", events[50:])
    assert not await trim_streams(redis_client, "eu", config)
    # Entries 0..19 are delivered but not acknowledged: kept, with all after them.
    assert await redis_client.xlen(stream) == 100
    await redis_client.xack(stream, "slow", *[entry_id for entry_id, _ in read[0][1]])
    await trim_streams(redis_client, "eu", config)
    assert await redis_client.xlen(stream) == 80
    # A group that stops reading holds the stream: past stream_len_max the relay holds back.
    small = EventsConfig(redis_url="redis://unused", stream_keep_min=0, stream_len_max=1_000)
    await publish(redis_client, "eu", events * 12)
    assert await trim_streams(redis_client, "eu", small)


async def test_the_consumer_takes_over_retries_dead_letters_and_applies_once(
    redis_client, fresh_dsn
):
    stream = stream_name("eu", "account")
    events = [
        Event(id=f"ev_{n}", type="account.created", region="eu", aggregate_type="account",
              aggregate_id=f"eu-{n}", version=1, time="2026-01-01T00:00:00Z", data={"n": n})
        for n in range(30)
    ]  # fmt: skip
    await publish(redis_client, "eu", events)
    database = await asyncpg.connect(fresh_dsn)
    await database.execute(INBOX_SCHEMA)
    await database.execute("CREATE TABLE applied (event_id text, n int)")
    failures = defaultdict(int)

    async def apply(event: Event) -> None:
        if event.data["n"] == 7:  # a poison entry: always fails
            raise ValueError("poison")
        if event.data["n"] == 3 and failures[3] < 2:  # fails twice, then succeeds
            failures[3] += 1
            raise ConnectionError("flaky")
        async with database.transaction():
            if await inbox_first(database, "test", event.id):
                await database.execute(
                    "INSERT INTO applied VALUES ($1, $2)", event.id, event.data["n"]
                )

    config = ConsumerConfig(visibility_timeout_ms=50, deliveries_max=4, count=10, block_ms=10)
    # A consumer that reads and dies without acknowledging: its entries are taken over.
    crashed = Consumer(redis_client, [stream], "g", "crashed", apply, config)
    await crashed.ensure_groups()
    await redis_client.xreadgroup("g", "crashed", {stream: ">"}, count=5)
    consumer = Consumer(redis_client, [stream], "g", "alive", apply, config)
    for _ in range(100):
        await consumer.run_once()
        await asyncio.sleep(0.02)
        pending = await redis_client.xpending(stream, "g")
        if not pending["pending"] and await database.fetchval("SELECT count(*) FROM applied") == 29:
            break
    # Every event once (a redelivery of an applied one changes nothing), the poison one dead.
    applied = await database.fetch("SELECT n FROM applied ORDER BY n")
    assert [r["n"] for r in applied] == [n for n in range(30) if n != 7]
    dead = await redis_client.xrange(dead_letter_stream(stream), "-", "+")
    assert [from_fields(fields).data["n"] for _, fields in dead] == [7]
    # Redelivering everything (a replay) applies nothing twice.
    await redis_client.xgroup_setid(stream, "g", "0")
    for _ in range(5):
        await consumer.run_once()
    assert await database.fetchval("SELECT count(*) FROM applied") == 29
    await database.close()


async def test_an_ordered_consumer_never_passes_a_failed_entry(redis_client):
    stream = stream_name("eu", "account")
    events = [
        Event(id=f"ev_{n}", type="account.created", region="eu", aggregate_type="account",
              aggregate_id="eu-1", version=n, time="2026-01-01T00:00:00Z", data={"n": n})
        for n in range(20)
    ]  # fmt: skip
    await publish(redis_client, "eu", events)
    applied, failures = [], {3: 2, 11: 1}

    async def apply(event: Event) -> None:
        n = event.data["n"]
        if failures.get(n):
            failures[n] -= 1
            raise ConnectionError("the database is restarting")
        applied.append(n)

    config = ConsumerConfig(visibility_timeout_ms=200, count=5, block_ms=10)
    # A member that read and died: the ordered one takes its entries over before reading on.
    gone = Consumer(redis_client, [stream], "o", "gone", apply, config, ordered=True)
    await gone.ensure_groups()
    await redis_client.xreadgroup("o", "gone", {stream: ">"}, count=2)
    consumer = Consumer(redis_client, [stream], "o", "one", apply, config, ordered=True)
    for _ in range(200):
        await consumer.run_once()
        if len(applied) == 20:
            break
        await asyncio.sleep(0.01)
    assert applied == list(range(20))


async def test_the_events_commands_tail_replay_and_rewind(redis_client, events_redis):
    events = [
        Event(id=f"ev_{n}", type="account.created", region="eu", aggregate_type="account",
              aggregate_id=f"eu-{n}", version=1, time="2026-01-01T00:00:00Z", data={"n": n})
        for n in range(5)
    ]  # fmt: skip
    await publish(redis_client, "eu", events)
    stream = stream_name("eu", "account")
    await redis_client.xgroup_create(stream, "g", "$")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "regiongate_cli", "events", *args, "--region", "eu",
             "--redis-url", events_redis.url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    tail = run("tail", "--count", "3")
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert tail.returncode == 0 and [e["data"]["n"] for e in lines] == [2, 3, 4]
    cursor = lines[0]["cursor"]
    replay = run("replay", "--from", cursor, "--family", "account")
    assert [json.loads(line)["id"] for line in replay.stdout.splitlines()] == [
        "ev_2", "ev_3", "ev_4"
    ]  # fmt: skip
    rewound = run("replay", "--from", cursor, "--group", "g")
    assert rewound.returncode == 0, rewound.stderr
    again = await redis_client.xreadgroup("g", "c", {stream: ">"})
    assert [from_fields(f).id for _, f in again[0][1]] == ["ev_2", "ev_3", "ev_4"]
    assert run("replay", "--from", cursor, "--group", "nobody").returncode == 1
    assert run("tail", "--count", "0").returncode == 1

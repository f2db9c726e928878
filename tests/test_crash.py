"""Crash safety: kill -9 a ledger node process while a load runs, start it again.

Every request is recorded before it is sent. After the restart: every acknowledged transfer is
in the ledger exactly once under its key; requests whose outcome the client never learned are
retried with the same key and each applies at most once; every player's balance is exactly the
sum of what was sent to it; and the ledger's invariants hold (nothing half-written). The same
is then shown for a PostgreSQL restart under a running node, which must recover by itself.
"""

from __future__ import annotations

import asyncio
import random
import signal

import asyncpg

from infra.services import PostgresCluster, free_port
from region_router.http_pool import UpstreamConnectionError
from region_router.ledger_client import LedgerClient
from tests.support import (
    CLEARING,
    SERVICE_KEYS_TEXT,
    assert_eventually,
    assert_ledger_invariants,
    ledger_process,
    new_player,
    unique,
)
from wire.service_auth import ServiceKeyring

WORKERS = 32
LOAD_BEFORE_KILL_S = 1.5
SEED = 7


class Load:
    """Closed-loop deposits from many workers. Every request is recorded in sent before it is
    sent (its outcome may never be learned); acked maps keys to the transfer ids confirmed."""

    def __init__(self, client: LedgerClient, players: list[str], workers: int) -> None:
        self.client = client
        self.players = players
        self.sent: dict[str, dict] = {}
        self.acked: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(SEED + i)) for i in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            key = unique("crash")
            payload = {
                "debit_account_id": CLEARING,
                "credit_account_id": rng.choice(self.players),
                "amount": rng.randint(1, 1000),
                "currency": "EUR",
            }
            self.sent[key] = payload
            try:
                response = await self.client.post(
                    "/v1/transfers", payload, idempotency_key=key, timeout_s=5
                )
            except (TimeoutError, UpstreamConnectionError):
                await asyncio.sleep(0.01)
                continue
            if response.status == 201:
                self.acked[key] = response.json()["id"]


async def _settle_unknown(client: LedgerClient, sent: dict, acked: dict) -> None:
    """Retry every request whose answer was lost; the key makes the retry safe."""
    for key, payload in sent.items():
        response = await client.post("/v1/transfers", payload, idempotency_key=key)
        assert response.status == 201, response.body
        if key in acked:
            assert response.replayed and response.json()["id"] == acked[key]


async def _check_exactly_once(dsn: str, sent: dict, acked: dict, players: list[str]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        stored = {
            row["key"]: row["transfer_id"]
            for row in await connection.fetch(
                "SELECT key, transfer_id FROM idempotency_keys WHERE key = ANY($1)", list(sent)
            )
        }
        for key, transfer_id in acked.items():
            assert stored.get(key) == transfer_id, f"acknowledged {key} lost or changed"
        count = await connection.fetchval(
            "SELECT count(*) FROM transfers WHERE id = ANY($1)", list(stored.values())
        )
        assert count == len(stored) == len(sent)
        balances = {
            row["id"]: row["posted"]
            for row in await connection.fetch(
                "SELECT id, credits_posted - debits_posted AS posted FROM accounts "
                "WHERE id = ANY($1)",
                players,
            )
        }
    finally:
        await connection.close()
    expected = dict.fromkeys(players, 0)
    for payload in sent.values():
        expected[payload["credit_account_id"]] += payload["amount"]
    assert balances == expected
    await assert_ledger_invariants(dsn)


async def test_kill_9_under_load_loses_nothing_and_applies_nothing_twice(
    fresh_dsn, tmp_path, ledger_pool
):
    ledger = ledger_process(tmp_path, fresh_dsn)
    ledger.start()
    try:
        key = ServiceKeyring.parse(SERVICE_KEYS_TEXT).signing_key
        client = LedgerClient(ledger.url, key, ledger_pool)
        players = [await new_player(client) for _ in range(20)]
        load = Load(client, players, WORKERS)
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        acked_before_kill = len(load.acked)
        ledger.kill(signal.SIGKILL)
        await asyncio.sleep(0.3)
        await load.stop()
        assert acked_before_kill > 100, "the load did not run before the kill"
        assert len(load.sent) > len(load.acked), "no request was in flight at the kill"
        ledger.start()
        await _settle_unknown(client, load.sent, load.acked)
        await _check_exactly_once(fresh_dsn, load.sent, load.acked, players)
    finally:
        ledger.stop()


async def test_postgres_restart_under_a_running_node(
    tmp_path, own_services_dir, session, ledger_pool
):
    """The node answers 503 while its database is down and recovers without a restart."""
    cluster = PostgresCluster(own_services_dir / "pg", free_port())
    cluster.start()
    ledger = None
    try:
        dsn = cluster.create_database("ledger_restart")
        ledger = ledger_process(tmp_path, dsn)
        ledger.start()
        key = ServiceKeyring.parse(SERVICE_KEYS_TEXT).signing_key
        client = LedgerClient(ledger.url, key, ledger_pool)
        players = [await new_player(client) for _ in range(5)]
        load = Load(client, players, 8)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.stop, "immediate")
        down = await client.post(
            "/v1/transfers",
            {
                "debit_account_id": CLEARING,
                "credit_account_id": players[0],
                "amount": 1,
                "currency": "EUR",
            },
            idempotency_key=unique(),
        )
        sent_probe_status = down.status
        await asyncio.to_thread(cluster.start)

        async def serving_again() -> bool:
            async with session.get(ledger.url + "/health/ready") as ready:
                return ready.status == 200 and len(load.acked) > acked_while_down

        acked_while_down = len(load.acked)
        await assert_eventually(serving_again, timeout_s=30)
        await load.stop()
        assert sent_probe_status == 503
        await _settle_unknown(client, load.sent, load.acked)
        await _check_exactly_once(dsn, load.sent, load.acked, players)
    finally:
        if ledger is not None:
            ledger.stop()
        cluster.stop("immediate")


async def test_workers_end_with_a_parent_killed_outright(fresh_dsn, tmp_path, ledger_pool):
    """A ledger started with several worker processes, its parent then SIGKILLed (as a
    supervisor or the OOM killer would): no worker goes on serving the port on its own."""
    ledger = ledger_process(tmp_path, fresh_dsn, extra={"workers": 2})
    ledger.start()
    try:
        key = ServiceKeyring.parse(SERVICE_KEYS_TEXT).signing_key
        client = LedgerClient(ledger.url, key, ledger_pool)
        assert (await client.get("/health/ready")).status == 200
        ledger.kill(signal.SIGKILL)

        async def port_closed() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", ledger.port)
            except OSError:
                return True
            writer.close()
            return False

        await assert_eventually(port_closed, timeout_s=20)
    finally:
        ledger.stop()

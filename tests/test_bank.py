"""The bank test: a seeded, time-bounded workload of intra- and cross-region transfers among a
fixed set of players in three regions, while faults are injected: ledger nodes killed with
SIGKILL and restarted, links between regions cut and healed, slowed or reset, and a PostgreSQL
restart in one region. Each region has its own PostgreSQL cluster, as in production.

After the load stops and the faults heal, every request whose outcome the client never learned
is retried with its key until it has a final answer. Then: every player's balance is exactly
what the final answers say it should be (so every acknowledged transfer is there exactly once,
and nothing else is); no hold is left; no player is below zero; every saga has ended; and the
cross-region audit is clean, which includes per currency the total over all regions being zero.

``REGIONGATE_BANK_SECONDS`` sets the load's duration (default 20, at most 120 in CI);
``REGIONGATE_BANK_SEED`` replays a seed. The schedule of choices (payers, payees, amounts,
faults and their targets) replays exactly; their timing against the servers cannot.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field

import pytest

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
        kinds = ["kill", "cut", "slow", "reset", "kill", "cut"] + ([] if pg_restarted else ["pg"])
        kind = rng.choice(kinds)
        link = kind in ("cut", "slow", "reset")
        bank.faults.append(f"{kind} {region}" + (f"/{peer}" if link else ""))
        if kind == "kill":
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


@pytest.fixture
def world(postgres, own_services_dir):
    world = SagaWorld(
        own_services_dir / "bank",
        postgres,
        SERVICE_KEYS_TEXT,
        regions=REGIONS,
        own_postgres=True,
        saga={"deadline_ms": 2_000, "step_timeout_ms": 500},
    )
    world.start()
    yield world
    world.stop()


@pytest.mark.timeout(LOAD_SECONDS + 150)
async def test_bank_under_faults_conserves_money(world, keyring, ledger_pool):
    print(f"bank test seed {SEED} (replay: REGIONGATE_BANK_SEED={SEED})")
    rng = random.Random(SEED)
    clients = {r: LedgerClient(world.url(r), keyring.signing_key, ledger_pool) for r in REGIONS}
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
    print(f"{context}; applied {applied} ({cross} across regions)")


async def _sagas_ended(world: SagaWorld) -> bool:
    return await world.unfinished_sagas() == 0

"""Concurrency on a real PostgreSQL: many requests at once end with exactly the expected
balances, no deadlock or serialization error reaches a client, and an idempotency key applies
once however many copies of its request race. Two ledger nodes share the database, so their
batches really contend for the same rows (the hot house account above all)."""

from __future__ import annotations

import asyncio
import random

from region_router.ledger_client import LedgerClient
from tests.support import (
    HOUSE,
    assert_ledger_invariants,
    balance,
    fund,
    ledger_config,
    new_player,
    start_ledger,
    unique,
)

TRANSFERS = 2000
PLAYERS = 40
SEED = 20261122


async def test_2000_concurrent_transfers_on_a_hot_account(
    fresh_dsn, keyring, ledger_pool, loop_errors
):
    """Half the transfers are bets into the one house account, half move money between random
    players; both nodes take requests at once. Expected balances are computed up front: every
    player is funded enough that no transfer can be refused, so every one must apply."""
    # Two writers in each node: batches of one node contend for rows as well as the two
    # nodes' batches do (one writer is the default, so this is the configuration to prove).
    config = ledger_config(fresh_dsn, batch={"writers": 2})
    nodes = [await start_ledger(config, keyring) for _ in range(2)]
    try:
        clients = [
            LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)
            for _, server in nodes
        ]
        players = [await new_player(clients[0]) for _ in range(PLAYERS)]
        start_amount = 1_000_000
        for player in players:
            await fund(clients[0], player, start_amount)
        house_before = (await balance(clients[0], HOUSE))["posted"]
        rng = random.Random(SEED)
        expected = dict.fromkeys(players, start_amount)
        house_expected = house_before
        requests = []
        for index in range(TRANSFERS):
            amount = rng.randint(1, 100)
            if index % 2 == 0:
                player = rng.choice(players)
                expected[player] -= amount
                house_expected += amount
                requests.append(
                    (
                        "/v1/bets",
                        {
                            "account_id": player,
                            "amount": amount,
                            "currency": "EUR",
                            "reference": unique("b"),
                        },
                    )
                )
            else:
                debit, credit = rng.sample(players, 2)
                expected[debit] -= amount
                expected[credit] += amount
                requests.append(
                    (
                        "/v1/transfers",
                        {
                            "debit_account_id": debit,
                            "credit_account_id": credit,
                            "amount": amount,
                            "currency": "EUR",
                        },
                    )
                )

        async def send(index: int, path: str, payload: dict):
            client = clients[index % 2]
            return await client.post(path, payload, idempotency_key=unique())

        responses = await asyncio.gather(
            *(send(i, path, payload) for i, (path, payload) in enumerate(requests))
        )
        statuses = [r.status for r in responses]
        assert statuses.count(201) == TRANSFERS, {s: statuses.count(s) for s in set(statuses)}
        for player in players:
            assert (await balance(clients[0], player))["posted"] == expected[player], player
        assert (await balance(clients[0], HOUSE))["posted"] == house_expected
        batches = sum(node.batcher.stats.batches for node, _ in nodes)
        assert batches < TRANSFERS, "requests were not grouped into batches"
    finally:
        for node, server in nodes:
            await server.close()
            await node.stop()
    await assert_ledger_invariants(fresh_dsn)


async def test_same_request_50_times_applies_once(client, ledger_dsn):
    player = await new_player(client)
    key = unique()
    payload = {
        "debit_account_id": "eu-clearing-EUR",
        "credit_account_id": player,
        "amount": 777,
        "currency": "EUR",
    }
    responses = await asyncio.gather(
        *(client.post("/v1/transfers", payload, idempotency_key=key) for _ in range(50))
    )
    assert {r.status for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    assert (await balance(client, player))["posted"] == 777
    conflict = await client.post("/v1/transfers", dict(payload, amount=778), idempotency_key=key)
    assert conflict.status == 409
    assert (await balance(client, player))["posted"] == 777
    await assert_ledger_invariants(ledger_dsn)


async def test_same_key_raced_across_two_nodes_applies_once(fresh_dsn, keyring, ledger_pool):
    """The key's row is claimed by whichever batch commits first; the other node's batch loses
    the unique index race, is retried, and replays the stored outcome."""
    # Two writers in each node: batches of one node contend for rows as well as the two
    # nodes' batches do (one writer is the default, so this is the configuration to prove).
    config = ledger_config(fresh_dsn, batch={"writers": 2})
    nodes = [await start_ledger(config, keyring) for _ in range(2)]
    try:
        clients = [
            LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)
            for _, server in nodes
        ]
        player = await new_player(clients[0])
        for round_number in range(10):
            key = unique(f"race{round_number}")
            payload = {
                "debit_account_id": "eu-clearing-EUR",
                "credit_account_id": player,
                "amount": 1,
                "currency": "EUR",
            }
            responses = await asyncio.gather(
                *(
                    clients[i % 2].post("/v1/transfers", payload, idempotency_key=key)
                    for i in range(20)
                )
            )
            assert {r.status for r in responses} == {201}
            assert len({r.json()["id"] for r in responses}) == 1
        assert (await balance(clients[0], player))["posted"] == 10
    finally:
        for node, server in nodes:
            await server.close()
            await node.stop()
    await assert_ledger_invariants(fresh_dsn)

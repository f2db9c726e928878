"""The ledger API end to end on a real node and a real PostgreSQL: accounts, posted and pending
transfers (post in full or in part, void, expiry), game operations with the rollback tombstone,
idempotent replays, status changes, history pagination and balance as of a past time. Every
test reads the ledger back and checks the invariants."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from ledger_node import batch_write
from region_router.ledger_client import LedgerClient
from tests.support import (
    CLEARING,
    assert_eventually,
    assert_ledger_invariants,
    balance,
    fund,
    ledger_config,
    new_player,
    start_ledger,
    unique,
)


def transfer_body(debit: str, credit: str, amount: int, **extra) -> dict:
    return {
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "currency": "EUR",
        **extra,
    }


async def test_posted_transfer_moves_money_and_replays(client, ledger_dsn):
    player = await new_player(client)
    key = unique()
    first = await client.post(
        "/v1/transfers", transfer_body(CLEARING, player, 500), idempotency_key=key
    )
    assert first.status == 201 and not first.replayed
    again = await client.post(
        "/v1/transfers", transfer_body(CLEARING, player, 500), idempotency_key=key
    )
    assert again.status == 201 and again.replayed
    assert again.body == first.body
    conflict = await client.post(
        "/v1/transfers", transfer_body(CLEARING, player, 501), idempotency_key=key
    )
    assert conflict.status == 409
    assert conflict.json()["type"] == "urn:regiongate:problem:idempotency-conflict"
    assert (await balance(client, player))["posted"] == 500
    await assert_ledger_invariants(ledger_dsn)


async def test_overdraft_is_refused_and_changes_nothing(client, ledger_dsn):
    player = await new_player(client)
    await fund(client, player, 100)
    refused = await client.post(
        "/v1/transfers", transfer_body(player, CLEARING, 101), idempotency_key=unique()
    )
    assert refused.status == 422
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"] == "urn:regiongate:problem:insufficient-funds"
    assert problem["field"] == "amount"
    after = await balance(client, player)
    assert (after["posted"], after["available"], after["version"]) == (100, 100, 1)
    await assert_ledger_invariants(ledger_dsn)


async def test_pending_partial_post_releases_the_rest(client, ledger_dsn):
    player = await new_player(client)
    await fund(client, player, 1000)
    hold = await client.post(
        "/v1/transfers",
        transfer_body(player, CLEARING, 600, pending=True, timeout_s=60),
        idempotency_key=unique(),
    )
    assert hold.status == 201 and hold.json()["status"] == "pending"
    held = await balance(client, player)
    assert (held["posted"], held["pending_debits"], held["available"]) == (1000, 600, 400)
    # The hold reduces what is available: a second debit beyond it is refused.
    refused = await client.post(
        "/v1/transfers", transfer_body(player, CLEARING, 401), idempotency_key=unique()
    )
    assert refused.status == 422
    hold_id = hold.json()["id"]
    too_much = await client.post(
        f"/v1/transfers/{hold_id}/post", {"amount": 601}, idempotency_key=unique()
    )
    assert too_much.json()["type"] == "urn:regiongate:problem:post-amount-exceeds-pending"
    posted = await client.post(
        f"/v1/transfers/{hold_id}/post", {"amount": 250}, idempotency_key=unique()
    )
    assert posted.status == 201 and posted.json()["amount"] == 250
    after = await balance(client, player)
    assert (after["posted"], after["pending_debits"], after["available"]) == (750, 0, 750)
    stored = (await client.get(f"/v1/transfers/{hold_id}")).json()
    assert (stored["status"], stored["resolved_amount"]) == ("posted", 250)
    again = await client.post(f"/v1/transfers/{hold_id}/void", idempotency_key=unique())
    assert again.json()["type"] == "urn:regiongate:problem:pending-transfer-already-posted"
    await assert_ledger_invariants(ledger_dsn)


async def test_void_and_expiry_release_holds(client, ledger_dsn):
    player = await new_player(client)
    await fund(client, player, 1000)
    hold = (
        await client.post(
            "/v1/transfers",
            transfer_body(player, CLEARING, 300, pending=True, timeout_s=60),
            idempotency_key=unique(),
        )
    ).json()
    voided = await client.post(f"/v1/transfers/{hold['id']}/void", idempotency_key=unique())
    assert voided.status == 201 and voided.json()["status"] == "voided"
    short = (
        await client.post(
            "/v1/transfers",
            transfer_body(player, CLEARING, 200, pending=True, timeout_s=1),
            idempotency_key=unique(),
        )
    ).json()
    assert (await balance(client, player))["available"] == 800

    async def expired() -> bool:
        return (await client.get(f"/v1/transfers/{short['id']}")).json()["status"] == "expired"

    await assert_eventually(expired, timeout_s=10)
    after = await balance(client, player)
    assert (after["posted"], after["pending_debits"], after["available"]) == (1000, 0, 1000)
    late = await client.post(f"/v1/transfers/{short['id']}/post", idempotency_key=unique())
    assert late.json()["type"] == "urn:regiongate:problem:pending-transfer-expired"
    await assert_ledger_invariants(ledger_dsn)


async def test_bet_win_rollback_and_tombstone(client, ledger_dsn):
    player = await new_player(client)
    await fund(client, player, 1000)
    bet = {
        "account_id": player,
        "amount": 300,
        "currency": "EUR",
        "reference": unique("bet"),
        "round_id": "round-1",
    }
    placed = await client.post("/v1/bets", bet, idempotency_key=unique())
    assert placed.status == 201 and placed.json()["kind"] == "bet"
    duplicate = await client.post("/v1/bets", bet, idempotency_key=unique())
    assert duplicate.json()["type"] == "urn:regiongate:problem:bet-reference-exists"
    win = {
        "account_id": player,
        "amount": 50,
        "currency": "EUR",
        "reference": unique("win"),
        "round_id": "round-1",
    }
    assert (await client.post("/v1/wins", win, idempotency_key=unique())).status == 201
    assert (await balance(client, player))["posted"] == 750

    rollback = {"account_id": player, "reference": bet["reference"]}
    rolled = await client.post("/v1/rollbacks", rollback, idempotency_key=unique())
    assert rolled.status == 200 and rolled.json()["outcome"] == "rolled_back"
    # A second rollback of the same bet (a provider's retry under a new key) moves nothing.
    again = await client.post("/v1/rollbacks", rollback, idempotency_key=unique())
    assert again.json()["outcome"] == "rolled_back"
    assert (await balance(client, player))["posted"] == 1050

    # The rollback arrives before its bet: tombstone, and the late bet is refused for ever.
    early = {"account_id": player, "reference": unique("bet")}
    tomb = await client.post("/v1/rollbacks", early, idempotency_key=unique())
    assert tomb.json()["outcome"] == "tombstoned"
    late_bet = dict(bet, reference=early["reference"])
    refused = await client.post("/v1/bets", late_bet, idempotency_key=unique())
    assert refused.status == 409
    assert refused.json()["type"] == "urn:regiongate:problem:bet-rolled-back"
    assert (await balance(client, player))["posted"] == 1050
    await assert_ledger_invariants(ledger_dsn)


async def test_history_is_cursor_paginated_newest_first(client):
    player = await new_player(client)
    for amount in range(1, 8):
        await fund(client, player, amount)
    seen, cursor = [], None
    while True:
        path = f"/v1/accounts/{player}/transfers?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(path)).json()
        seen += [item["amount"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    ascending = (await client.get(f"/v1/accounts/{player}/transfers?order=asc&limit=10")).json()
    assert [i["amount"] for i in ascending["items"]] == [1, 2, 3, 4, 5, 6, 7]
    assert ascending["items"][-1]["balance_after"]["posted"] == 28
    wrong = await client.get(f"/v1/accounts/{player}/transfers?cursor=bogus")
    assert wrong.status == 400 and wrong.json()["field"] == "cursor"


async def test_balance_as_of_a_past_time(client):
    player = await new_player(client)
    await fund(client, player, 100)
    middle = datetime.now(UTC)
    await fund(client, player, 50)
    then = (
        await client.get(
            f"/v1/accounts/{player}/balance?as_of={middle.isoformat().replace('+00:00', 'Z')}"
        )
    ).json()
    now = await balance(client, player)
    assert (then["posted"], then["version"]) == (100, 1)
    assert (now["posted"], now["version"]) == (150, 2)
    assert now["version"] > then["version"]


@pytest.mark.parametrize(
    ("transitions", "expected"),
    [
        (["frozen"], 200),
        (["frozen", "active"], 200),
        (["closed"], 409),  # has a balance
        (["frozen", "closed", "active"], 409),
    ],
)
async def test_account_status_transitions(client, transitions, expected):
    player = await new_player(client)
    await fund(client, player, 10)
    if "closed" in transitions:
        await client.post(
            "/v1/transfers", transfer_body(player, CLEARING, 10), idempotency_key=unique()
        )
        expected = 409 if transitions[-1] == "active" else 200
    statuses = []
    for status in transitions:
        statuses.append(
            (await client.post(f"/v1/accounts/{player}/status", {"status": status})).status
        )
    assert statuses[-1] == expected


async def test_frozen_account_refuses_money(client):
    player = await new_player(client)
    await fund(client, player, 10)
    await client.post(f"/v1/accounts/{player}/status", {"status": "frozen"})
    refused = await client.post(
        "/v1/transfers", transfer_body(player, CLEARING, 5), idempotency_key=unique()
    )
    assert refused.json()["type"] == "urn:regiongate:problem:account-frozen"
    refused = await client.post(
        "/v1/transfers", transfer_body(CLEARING, player, 5), idempotency_key=unique()
    )
    assert refused.json()["field"] == "credit_account_id"


async def test_health_endpoints_need_no_credentials(ledger_node, session):
    _, server = ledger_node
    async with session.get(server.make_url("/health/ready")) as response:
        assert response.status == 200
    async with session.get(server.make_url("/health/live")) as response:
        assert response.status == 200


async def test_quotes_backslashes_and_unicode_round_trip_exactly(client, ledger_dsn):
    """Batches travel to PostgreSQL as quoted literals: awkward text must come back unchanged."""
    player = await new_player(client)
    tricky = "o'neil \\\\ \"q\" ''; DROP TABLE accounts; -- \u00e9\u4e2d\U0001f3b2 \\u0000"
    response = await client.post(
        "/v1/transfers",
        transfer_body(
            CLEARING, player, 5, reference="ref'\\x", metadata={"note": tricky, "k'\\": "v"}
        ),
        idempotency_key=unique("it's"[:2]) + "-o.k",
    )
    assert response.status == 201, response.body
    stored = (await client.get(f"/v1/transfers/{response.json()['id']}")).json()
    assert stored["reference"] == "ref'\\x"
    assert stored["metadata"] == {"note": tricky, "k'\\": "v"}
    await assert_ledger_invariants(ledger_dsn)


async def test_a_session_that_lost_the_prepared_write_prepares_it_again(
    ledger_node, client, ledger_dsn
):
    """The batch write is a server-side prepared statement that the batcher remembers by
    backend; a session without it (a new one on a reused pid) fails that batch's write, which
    is retried after preparing again, and applies once."""
    node, _ = ledger_node
    player = await new_player(client)
    await fund(client, player, 100)
    # Every batch connection (the writers are idle, so they hold none) loses the statement,
    # while the batcher believes each has it: what a new session on a reused pid looks like.
    connections = [await node.batch_pool.acquire() for _ in range(node.config.batch.writers)]
    try:
        for connection in connections:
            names = await connection.fetch(
                "SELECT name FROM pg_prepared_statements WHERE name LIKE 'regiongate_write_%'"
            )
            for row in names:
                await connection.execute(f"DEALLOCATE {row['name']}")
            for parts in range(1, batch_write.ALL_WRITE_PARTS + 1):  # every shape of the write
                node.batcher._prepared.add((connection.get_server_pid(), parts))
    finally:
        for connection in connections:
            await node.batch_pool.release(connection)
    key = unique()
    answer = await client.post(
        "/v1/transfers", transfer_body(player, CLEARING, 40), idempotency_key=key
    )
    assert answer.status == 201, answer.body
    assert (await balance(client, player))["posted"] == 60
    assert node.batcher.stats.retries >= 1
    await assert_ledger_invariants(ledger_dsn)


async def test_work_queued_while_the_writer_gives_back_its_connection_is_served(
    ledger_dsn, keyring, ledger_pool, loop_errors
):
    """A writer whose queue runs dry gives its connection back (ending the transaction the last
    batch opened). A request that arrives during that release must still be served: with one
    writer and a slow release, it once waited for a wakeup that had already been spent."""
    node, server = await start_ledger(ledger_config(ledger_dsn, batch={"writers": 1}), keyring)
    client = LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)
    real_pool = node.batcher._pool

    class SlowRelease:
        def __getattr__(self, name):
            return getattr(real_pool, name)

        async def release(self, connection, timeout=None):
            await asyncio.sleep(0.2)  # the window under test is a time
            await real_pool.release(connection, timeout=timeout)

    try:
        player = await new_player(client)
        await fund(client, player, 1_000)
        node.batcher._pool = SlowRelease()
        for _ in range(3):
            first = await client.post(
                "/v1/transfers", transfer_body(player, CLEARING, 1), idempotency_key=unique()
            )
            assert first.status == 201  # the writer is now giving its connection back
            second = await client.post(
                "/v1/transfers",
                transfer_body(player, CLEARING, 1),
                idempotency_key=unique(),
                timeout_s=5,
            )
            assert second.status == 201, second.body
        assert (await balance(client, player))["posted"] == 1_000 - 6
    finally:
        node.batcher._pool = real_pool
        await server.close()
        await node.stop()
    await assert_ledger_invariants(ledger_dsn)


# The sessions of this test's database that sit idle in a transaction: a batch writer holding
# its connection (batch.idle_hold_ms) with the next batch's transaction open.
IDLE_IN_TRANSACTION = (
    "SELECT pid, backend_xid, backend_xmin FROM pg_stat_activity"
    " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
)


async def test_no_batch_connection_stays_open_in_a_transaction_once_idle(
    ledger_node, client, ledger_dsn
):
    """Each batch's message opens the next batch's transaction. While the queue is dry a writer
    keeps that transaction for batch.idle_hold_ms, empty: it holds no transaction id and no
    snapshot, so it keeps nothing from vacuum. After that the writer gives its connection back
    and the transaction ends: PostgreSQL shows no session idle in a transaction."""
    player = await new_player(client)
    await fund(client, player, 1_000)
    answers = await asyncio.gather(
        *(
            client.post(
                "/v1/transfers", transfer_body(player, CLEARING, 1), idempotency_key=unique()
            )
            for _ in range(200)
        )
    )
    assert all(answer.status == 201 for answer in answers)
    connection = await asyncpg.connect(ledger_dsn)
    try:
        held = await connection.fetch(IDLE_IN_TRANSACTION)
        assert all(row["backend_xid"] is None and row["backend_xmin"] is None for row in held)

        async def none_held() -> bool:
            return await connection.fetch(IDLE_IN_TRANSACTION) == []

        hold_s = ledger_node[0].config.batch.idle_hold_ms / 1000
        await assert_eventually(none_held, timeout_s=hold_s + 3)
    finally:
        await connection.close()
    assert (await balance(client, player))["posted"] == 800


async def test_a_held_connection_the_server_ended_is_replaced_not_failed(
    ledger_node, client, ledger_dsn
):
    """A writer keeps its connection between batches (batch.idle_hold_ms). If the server ends
    that session meanwhile (a timeout, an operator, a restart), the next batch must run on
    another connection: nothing of it was sent on the dead one, so it must not fail."""
    player = await new_player(client)
    await fund(client, player, 100)
    connection = await asyncpg.connect(ledger_dsn)
    try:
        held = await connection.fetch(IDLE_IN_TRANSACTION)
        assert held, "no writer is holding its connection"
        for row in held:
            await connection.execute("SELECT pg_terminate_backend($1)", row["pid"])

        async def ended() -> bool:
            pids = [row["pid"] for row in held]
            return not await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )

        await assert_eventually(ended)
    finally:
        await connection.close()
    answer = await client.post(
        "/v1/transfers", transfer_body(player, CLEARING, 1), idempotency_key=unique()
    )
    assert answer.status == 201, answer.body
    assert (await balance(client, player))["posted"] == 99

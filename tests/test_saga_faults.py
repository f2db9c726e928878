"""The saga's fault matrix: kill -9 the orchestrating ledger node at each step boundary, with a
destination that accepts and one that refuses; and lose step 2's reply on a slow link, so that
the cancel past the deadline finds step 2 already applied and the saga goes forward.

After every case: the saga ended (completed exactly when the destination accepted), nothing
was credited twice, a compensated hold was released, and the cross-region audit is clean.
"""

from __future__ import annotations

import pytest

from ledger_node.saga import CRASH_AT_ENV
from region_router.http_pool import UpstreamConnectionError
from region_router.ledger_client import LedgerClient
from tests.support import (
    SERVICE_KEYS_TEXT,
    SagaWorld,
    assert_eventually,
    balance,
    fund,
    new_player,
    node_ready,
    process_dead,
    unique,
)

FUNDED = 1_000
AMOUNT = 321


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    # A deadline well past a restart, so a crash is recovered forward, not by cancelling.
    world = SagaWorld(
        tmp_path_factory.mktemp("saga-faults"),
        postgres,
        SERVICE_KEYS_TEXT,
        regions=("eu", "us"),
        saga={"deadline_ms": 15_000},
    )
    world.start()
    yield world
    world.stop()


@pytest.fixture
async def clients(world, keyring, ledger_pool):
    return world.clients(keyring.signing_key, ledger_pool)


async def _final(client: LedgerClient, body: dict, key: str) -> dict:
    """Retry the request with its key until the saga it started has ended; its final view."""
    final = {}

    async def ended() -> bool:
        try:
            response = await client.post("/v1/sagas", body, idempotency_key=key, timeout_s=5)
        except (UpstreamConnectionError, TimeoutError):
            return False
        payload = response.json()
        view = payload.get("transfer", payload) if response.status >= 400 else payload
        final.update(view)
        return view.get("status") in ("completed", "compensated")

    await assert_eventually(ended, timeout_s=30, interval_s=0.2)
    return final


@pytest.mark.parametrize("destination_refuses", [False, True], ids=["accepts", "refuses"])
@pytest.mark.parametrize("point", ["hold", "answer", "finish"])
async def test_kill_the_orchestrator_at_a_step_boundary(world, clients, point, destination_refuses):
    payer = await new_player(clients["eu"])
    payee = await new_player(clients["us"])
    await fund(clients["eu"], payer, FUNDED)
    if destination_refuses:
        await clients["us"].post(f"/v1/accounts/{payee}/status", {"status": "closed"})
    body = {
        "debit_account_id": payer,
        "credit_account_id": payee,
        "amount": AMOUNT,
        "currency": "EUR",
    }
    key = unique("fault")
    world.kill("eu")
    world.restart("eu", env={CRASH_AT_ENV: point})
    await assert_eventually(node_ready(clients["eu"]))  # past the pool's stale connections
    with pytest.raises((UpstreamConnectionError, TimeoutError)):
        await clients["eu"].post("/v1/sagas", body, idempotency_key=key, timeout_s=10)
    await assert_eventually(process_dead(world, "eu"), timeout_s=10)
    world.restart("eu")

    final = await _final(clients["eu"], body, key)
    expected = "compensated" if destination_refuses else "completed"
    assert final["status"] == expected, final
    payer_balance = await balance(clients["eu"], payer)
    payee_balance = await balance(clients["us"], payee)
    moved = 0 if destination_refuses else AMOUNT
    assert payer_balance["posted"] == FUNDED - moved
    assert payer_balance["pending_debits"] == 0  # a compensated hold is released
    assert payee_balance["posted"] == moved
    failures = await world.audit()
    assert not failures, failures


async def test_a_lost_reply_is_found_applied_by_the_cancel(world, clients):
    """Step 2's reply outlives the call's timeout on a slow link, every time: the orchestrator
    never hears it, reaches the deadline and cancels; when the link recovers the cancel is
    answered "already applied", so the saga goes forward instead of voiding."""
    payer = await new_player(clients["eu"])
    payee = await new_player(clients["us"])
    await fund(clients["eu"], payer, FUNDED)
    body = {"debit_account_id": payer, "credit_account_id": payee, "amount": 5, "currency": "EUR"}
    # A 300 ms one-way delay: a request arrives, its reply comes back after the 400 ms timeout.
    world.link("eu", "us", "set_delay", 300)
    try:
        key = unique("lost")
        response = await clients["eu"].post("/v1/sagas", body, idempotency_key=key)
        assert response.status == 202
        saga_id = response.json()["id"]

        async def credited() -> bool:
            return (await balance(clients["us"], payee))["posted"] == 5

        await assert_eventually(credited, timeout_s=10)
        shown = (await clients["eu"].get(f"/v1/transfers/{saga_id}")).json()
        assert shown["status"] == "pending" and shown["progress"]["attempts"] >= 1
    finally:
        world.link("eu", "us", "set_delay", 0)
    final = await _final(clients["eu"], body, key)
    assert final["status"] == "completed", final
    assert (await balance(clients["us"], payee))["posted"] == 5
    assert (await balance(clients["eu"], payer))["posted"] == FUNDED - 5
    failures = await world.audit()
    assert not failures, failures

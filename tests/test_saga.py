"""Cross-region transfers end to end: three regions as separate ledger processes, linked only
through WAN proxies the tests cut, heal and slow down.

Proves: a saga completes and moves the money exactly once; a refusal at the destination, or a
destination that cannot be reached before the deadline, compensates and releases the hold; a
saga's hold cannot be posted or voided by anyone else; a cancel racing a late step 2 has
exactly one winner; and after every scenario the cross-region audit is clean.
"""

from __future__ import annotations

import asyncio

import pytest

from region_router.ledger_client import LedgerClient
from tests.support import (
    OUTSIDER,
    PEER_KEY_ID,
    SERVICE_KEYS_TEXT,
    SagaWorld,
    assert_eventually,
    balance,
    fund,
    new_player,
    region_status,
    unique,
)
from wire.ids import saga_credit_transfer_id


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    world = SagaWorld(tmp_path_factory.mktemp("sagas"), postgres, SERVICE_KEYS_TEXT)
    world.start()
    yield world
    world.stop()


@pytest.fixture
async def clients(world, keyring, ledger_pool):
    return world.clients(keyring.signing_key, ledger_pool)


@pytest.fixture
async def peer_us(world, keyring, ledger_pool):
    """The us ledger as another region's ledger calls it: signed with the peer key."""
    return LedgerClient(world.url("us"), keyring.get(PEER_KEY_ID), ledger_pool)


async def _players(clients, fund_eu: int = 1_000) -> tuple[str, str]:
    payer = await new_player(clients["eu"])
    payee = await new_player(clients["us"])
    if fund_eu:
        await fund(clients["eu"], payer, fund_eu)
    return payer, payee


def _saga_body(payer: str, payee: str, amount: int) -> dict:
    return {
        "debit_account_id": payer,
        "credit_account_id": payee,
        "amount": amount,
        "currency": "EUR",
        "reference": "p2p",
    }


async def _clean(world: SagaWorld) -> None:
    await assert_eventually(lambda: _none_running(world), timeout_s=15)
    failures = await world.audit()
    assert not failures, failures


async def _none_running(world: SagaWorld) -> bool:
    return await world.unfinished_sagas() == 0


async def test_a_saga_moves_money_once_and_replays(world, clients):
    payer, payee = await _players(clients)
    key = unique("saga")
    response = await clients["eu"].post(
        "/v1/sagas", _saga_body(payer, payee, 300), idempotency_key=key
    )
    assert response.status == 201, response.body
    saga = response.json()
    assert saga["status"] == "completed"
    assert saga["progress"]["credit_transfer_id"] == saga_credit_transfer_id(saga["id"], "us")
    assert (await balance(clients["eu"], payer))["posted"] == 700
    assert (await balance(clients["us"], payee))["posted"] == 300

    again = await clients["eu"].post(
        "/v1/sagas", _saga_body(payer, payee, 300), idempotency_key=key
    )
    assert again.status == 201 and again.replayed
    assert again.json()["id"] == saga["id"]
    other = await clients["eu"].post(
        "/v1/sagas", _saga_body(payer, payee, 301), idempotency_key=key
    )
    assert other.status == 409
    shown = await clients["eu"].get(f"/v1/transfers/{saga['id']}")
    assert shown.status == 200 and shown.json()["status"] == "completed"
    assert (await balance(clients["us"], payee))["posted"] == 300
    await _clean(world)


async def test_insufficient_funds_ends_the_saga_before_anything_moves(world, clients):
    payer, payee = await _players(clients, fund_eu=100)
    response = await clients["eu"].post(
        "/v1/sagas", _saga_body(payer, payee, 101), idempotency_key=unique("saga")
    )
    assert response.status == 422
    assert response.json()["type"].endswith("insufficient-funds")
    assert (await balance(clients["eu"], payer))["available"] == 100
    assert (await balance(clients["us"], payee))["posted"] == 0
    await _clean(world)


async def test_a_refusal_at_the_destination_compensates_for_good(world, clients, peer_us):
    payer, payee = await _players(clients)
    frozen = await clients["us"].post(f"/v1/accounts/{payee}/status", {"status": "frozen"})
    assert frozen.status == 200
    response = await clients["eu"].post(
        "/v1/sagas", _saga_body(payer, payee, 250), idempotency_key=unique("saga")
    )
    assert response.status == 422, response.body
    problem = response.json()
    assert problem["type"].endswith("account-frozen"), problem
    assert problem["transfer"]["status"] == "compensated"
    assert (await balance(clients["eu"], payer))["available"] == 1_000

    # Unfrozen later, a late copy of step 2 is still refused: the refusal was recorded.
    await clients["us"].post(f"/v1/accounts/{payee}/status", {"status": "active"})
    late = await peer_us.post(
        f"/v1/saga-steps/{problem['transfer']['id']}/credit",
        {"origin_region": "eu", "credit_account_id": payee, "amount": 250, "currency": "EUR"},
    )
    assert late.status == 422 and late.json()["step_status"] == "refused"
    assert (await balance(clients["us"], payee))["posted"] == 0
    await _clean(world)


async def test_a_saga_hold_belongs_to_its_saga(world, clients, peer_us):
    payer, payee = await _players(clients)
    world.link("eu", "us", "cut")
    try:
        response = await clients["eu"].post(
            "/v1/sagas", {**_saga_body(payer, payee, 400)}, idempotency_key=unique("saga")
        )
        # Cut, the saga cannot end within its deadline plus the wait? It can: past the
        # deadline it cancels, and the cancel cannot land either. So it is still pending.
        assert response.status == 202, response.body
        saga = response.json()
        assert response.headers["Location"] == f"/v1/transfers/{saga['id']}"
        hold = saga["progress"]["hold_transfer_id"]
        assert (await balance(clients["eu"], payer))["available"] == 600
        for action in ("post", "void"):
            refused = await clients["eu"].post(
                f"/v1/transfers/{hold}/{action}", {}, idempotency_key=unique()
            )
            assert refused.status == 409
            assert refused.json()["type"].endswith("transfer-owned-by-saga")
    finally:
        world.link("eu", "us", "heal")
    await _clean(world)
    # The deadline passed while cut: the cancel landed after the heal, nothing moved.
    shown = (await clients["eu"].get(f"/v1/transfers/{saga['id']}")).json()
    assert shown["status"] == "compensated" and shown["reason"] == "deadline_exceeded"
    assert shown["progress"]["attempts"] >= 1 and shown["progress"]["last_error"]
    assert (await balance(clients["eu"], payer))["available"] == 1_000
    assert (await balance(clients["us"], payee))["posted"] == 0
    late = await peer_us.post(
        f"/v1/saga-steps/{saga['id']}/credit",
        {"origin_region": "eu", "credit_account_id": payee, "amount": 400, "currency": "EUR"},
    )
    assert late.status == 409 and late.json()["step_status"] == "cancelled"


async def test_a_short_cut_heals_within_the_deadline_and_completes(world, clients):
    payer, payee = await _players(clients)
    world.link("eu", "us", "cut")
    request = asyncio.create_task(
        clients["eu"].post("/v1/sagas", _saga_body(payer, payee, 50), idempotency_key=unique())
    )
    # The fault's duration, not a wait for a result: longer than one call's timeout (so the
    # saga records an attempt), shorter than the deadline (so it still goes forward).
    await asyncio.sleep(0.9)
    world.link("eu", "us", "heal")
    response = await request
    assert response.status == 201, response.body
    assert (await balance(clients["us"], payee))["posted"] == 50
    # The answer, built without reading the row back, says what the row says.
    shown = await clients["eu"].get(f"/v1/transfers/{response.json()['id']}")
    assert response.json() == shown.json()
    await _clean(world)


async def test_cancel_racing_a_late_step_two_has_one_winner(clients, peer_us):
    """Step 2 and its cancel, sent together many times for many saga ids straight at the
    destination: every step id ends applied or cancelled, never both, every answer agrees with
    the record, and the payee received exactly the applied amounts. The steps claim to come
    from OUTSIDER, a peer region outside this world, so the world's audit stays exact."""
    payee = await new_player(clients["us"])
    saga_ids = [f"{OUTSIDER}-s-{unique('')[-26:].replace('-', '0')}" for _ in range(40)]
    body = {"origin_region": OUTSIDER, "credit_account_id": payee, "amount": 7, "currency": "EUR"}

    async def call(saga_id: str, action: str):
        response = await peer_us.post(f"/v1/saga-steps/{saga_id}/{action}", body)
        return saga_id, response.json().get("step_status")

    calls = [call(s, a) for s in saga_ids for a in ("credit", "cancel", "credit", "cancel")]
    answers = await asyncio.gather(*calls)
    outcome: dict[str, set] = {}
    for saga_id, step_status in answers:
        outcome.setdefault(saga_id, set()).add(step_status)
    assert all(len(statuses) == 1 for statuses in outcome.values()), outcome
    applied = sum(1 for statuses in outcome.values() if statuses == {"applied"})
    assert (await balance(clients["us"], payee))["posted"] == 7 * applied


async def test_only_peer_ledgers_may_call_saga_steps(world, clients):
    """A gateway's key is valid for the ledger API, but not for step 2, which takes money out
    of a transit account: 403, and nothing is written."""
    payee = await new_player(clients["us"])
    body = {"origin_region": "eu", "credit_account_id": payee, "amount": 9, "currency": "EUR"}
    for action in ("credit", "cancel"):
        response = await clients["us"].post(f"/v1/saga-steps/eu-s-{'0' * 26}/{action}", body)
        assert response.status == 403 and response.json()["type"].endswith("forbidden")
    assert (await balance(clients["us"], payee))["posted"] == 0


async def test_a_cancel_lands_even_for_an_account_no_longer_here(world, peer_us):
    """A re-homed payee makes step 2 fail at the old home (421, not a durable answer), so the
    saga cancels past its deadline: that cancel must still be recorded there."""
    saga_id = f"eu-s-{unique('')[-26:].replace('-', '0')}"
    body = {"origin_region": "eu", "credit_account_id": "ap-moved", "amount": 3, "currency": "EUR"}
    credit = await peer_us.post(f"/v1/saga-steps/{saga_id}/credit", body)
    assert credit.status == 421 and "step_status" not in credit.json()
    cancel = await peer_us.post(f"/v1/saga-steps/{saga_id}/cancel", body)
    assert cancel.status == 200 and cancel.json()["step_status"] == "cancelled"
    late = await peer_us.post(f"/v1/saga-steps/{saga_id}/credit", body)
    assert late.status == 421  # and were it local again, the tombstone would refuse it


async def test_a_destination_marked_down_is_refused_before_anything_is_held(world, clients):
    """Consistency over availability: towards a region the directory marks down, a saga could
    only hold money and wait, so the source answers 503 with Retry-After and holds nothing."""
    payer, payee = await _players(clients)
    with region_status(world.root / "directory-eu.yaml", "us", "down"):

        async def refused(amount: int) -> bool:
            response = await clients["eu"].post(
                "/v1/sagas", _saga_body(payer, payee, amount), idempotency_key=unique()
            )
            if response.status != 503:
                return False
            assert response.json()["type"].endswith("region-unavailable")
            assert response.headers["Retry-After"] == "30"
            return True

        # Until the directory file is re-read, a saga that could be held would be: the wait
        # asks for more than the payer has, so none of its tries holds anything either way.
        await assert_eventually(lambda: refused(10**6), timeout_s=10)
        before = await balance(clients["eu"], payer)
        assert await refused(10)
        after = await balance(clients["eu"], payer)
        assert after["available"] == before["available"] and after["pending_debits"] == 0

    async def served() -> bool:
        response = await clients["eu"].post(
            "/v1/sagas", _saga_body(payer, payee, 10), idempotency_key=unique()
        )
        return response.status == 201

    await assert_eventually(served, timeout_s=10)
    await _clean(world)

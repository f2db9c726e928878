"""The scope of an idempotency key, across regions (docs/decisions/0001, docs/api.md): the
client that sent it and the region that owns what the request changes, never the gateway it
entered by.

Proved through both regions' gateways on a real two-region cluster: the same key and body
applies once, whichever gateway each try enters by, for a transfer inside a region and for one
across regions (a saga); another body under the same key in the same scope is a 409 through
every gateway; an account creation retried through every gateway creates one account, whether
its region comes from the body, from the client's configured home (``home_region`` claim) or
from the directory's ``default_region``; and a creation's replay answers what the creation
answered (an empty account at version 0), not the account as it is now.
"""

from __future__ import annotations

from tests.support import unique

P = "urn:regiongate:problem:"
GATEWAYS = ("eu", "us", "eu", "us")


async def test_a_transfer_applies_once_whatever_gateway_each_try_enters_by(cluster):
    alice = await cluster.account("eu", fund=1_000)
    bob = await cluster.account("eu")
    carol = await cluster.account("us")
    token = cluster.keys.mint("alice", "wallet", accounts=[alice])
    for credit in (bob, carol):  # inside eu, then eu -> us (a saga)
        key = unique("scope")
        body = {"debit_account_id": alice, "credit_account_id": credit, "currency": "EUR"}
        answers = [
            await cluster.call(
                gateway, "POST", "/v1/transfers", token=token, key=key, body={**body, "amount": 7}
            )
            for gateway in GATEWAYS
        ]
        assert [a[0] for a in answers] == [201] * len(GATEWAYS), answers
        assert len({a[2]["id"] for a in answers}) == 1
        assert [a[1].get("Idempotent-Replayed") for a in answers[1:]] == ["true"] * 3
        for gateway in ("eu", "us"):
            status, _, problem = await cluster.call(
                gateway, "POST", "/v1/transfers", token=token, key=key, body={**body, "amount": 8}
            )
            assert status == 409 and problem["type"] == P + "idempotency-conflict", problem
    balances = {
        account: (
            await cluster.call("us", "GET", f"/v1/accounts/{account}/balance", token=cluster.admin)
        )[2]["posted"]
        for account in (alice, bob, carol)
    }
    assert balances == {alice: 986, bob: 7, carol: 7}


async def test_a_creation_retried_through_every_gateway_creates_one_account(cluster):
    homed = cluster.keys.mint("backoffice-eu", "admin", home_region="eu")
    cases = [
        ("region in the body", cluster.admin, {"currency": "EUR", "region": "eu"}, "eu"),
        ("the client's home", homed, {"currency": "EUR"}, "eu"),
        ("the directory's default", cluster.admin, {"currency": "EUR"}, "us"),
    ]
    for name, token, body, region in cases:
        key = unique("create")
        answers = [
            await cluster.call(gateway, "POST", "/v1/accounts", token=token, key=key, body=body)
            for gateway in GATEWAYS
        ]
        assert [a[0] for a in answers] == [201] * len(GATEWAYS), (name, answers)
        assert len({a[2]["id"] for a in answers}) == 1, name
        assert answers[0][2]["region"] == region, name
        for gateway in ("eu", "us"):
            status, _, problem = await cluster.call(
                gateway,
                "POST",
                "/v1/accounts",
                token=token,
                key=key,
                body={**body, "currency": "USD"},
            )
            assert status == 409 and problem["type"] == P + "idempotency-conflict", (name, problem)


async def test_a_creation_replay_answers_what_the_creation_answered(cluster):
    key = unique("create")
    body = {"currency": "EUR", "region": "eu", "operator": "op-1"}
    status, _, created = await cluster.call(
        "eu", "POST", "/v1/accounts", token=cluster.admin, key=key, body=body
    )
    assert status == 201
    deposit = {
        "debit_account_id": "eu-clearing-EUR",
        "credit_account_id": created["id"],
        "amount": 50,
        "currency": "EUR",
    }
    assert (
        await cluster.call(
            "eu", "POST", "/v1/transfers", token=cluster.admin, key=unique(), body=deposit
        )
    )[0] == 201
    for gateway in ("eu", "us"):
        status, headers, replayed = await cluster.call(
            gateway, "POST", "/v1/accounts", token=cluster.admin, key=key, body=body
        )
        assert status == 201 and headers.get("Idempotent-Replayed") == "true"
        assert replayed == created

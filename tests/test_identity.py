"""Players and usernames end to end, through the public gateways of two regions on real
PostgreSQL (the ``cluster`` fixture): creation, lookups, renames with held names, refusals."""

from __future__ import annotations

import asyncio

from tests.support import unique

P = "urn:regiongate:problem:"


async def create(cluster, gateway="eu", token=None, key=None, **body):
    return await cluster.call(
        gateway,
        "POST",
        "/v1/players",
        token=token or cluster.admin,
        key=key or unique(),
        body=body,
    )


def name(prefix: str = "p") -> str:
    return f"{prefix}{unique('')[-10:]}".replace("-", "")


async def test_a_player_is_created_with_its_username_accounts_and_public_id(cluster):
    username = name("Alice")
    status, _, player = await create(
        cluster, username=username, display_name="  Alice  W ", currencies=["EUR"], region="us"
    )
    assert status == 201, player
    assert player["username"] == username.lower()
    assert player["username_generated"] is False
    assert player["status"] == "active"
    assert player["home_region"] == "us"
    assert player["display_name"] == "Alice W"
    assert player["id"].startswith("pl_")
    account = player["accounts"]["EUR"]
    assert account.startswith("us-")
    # the wallet account is a real ledger account, through any gateway
    for gateway in ("eu", "us"):
        status, _, read = await cluster.call(
            gateway, "GET", f"/v1/accounts/{account}", token=cluster.admin
        )
        assert status == 200 and read["metadata"]["player_id"] == player["id"]
        status, _, found = await cluster.call(
            gateway, "GET", f"/v1/usernames/{username.upper()}", token=cluster.admin
        )
        assert status == 200 and found["id"] == player["id"], found
        status, _, read = await cluster.call(
            gateway, "GET", f"/v1/players/{player['id']}", token=cluster.admin
        )
        assert status == 200 and read["username"] == player["username"]


async def test_a_creation_retried_through_another_gateway_makes_one_player(cluster):
    key = unique()
    username = name("retry")
    answers = [
        await create(cluster, gateway, key=key, username=username, region="eu")
        for gateway in ("eu", "us", "eu")
    ]
    assert [a[0] for a in answers] == [201, 201, 201]
    assert len({a[2]["id"] for a in answers}) == 1
    assert answers[1][1].get("Idempotent-Replayed") == "true"
    status, _, problem = await create(cluster, "us", key=key, username=name("other"), region="eu")
    assert status == 409 and problem["type"] == P + "idempotency-conflict"


async def test_a_taken_or_invalid_name_falls_back_to_a_generated_one(cluster):
    username = name("bob")
    assert (await create(cluster, username=username, region="eu"))[0] == 201
    look_alike = username.replace("o", "0", 1)
    status, _, second = await create(cluster, "us", username=look_alike, region="us")
    assert status == 201, second
    assert second["username_generated"] is True
    assert second["username_refusal"] == "username-taken"
    assert second["username"].startswith("player")
    status, _, third = await create(cluster, username="ad", region="us")
    assert status == 201 and third["username_refusal"] == "too-short"
    status, _, strict = await create(
        cluster, username=look_alike, username_required=True, region="us"
    )
    assert status == 409 and strict["type"] == P + "username-taken", strict
    status, _, strict = await create(cluster, username="root", username_required=True)
    assert status == 422 and strict["type"] == P + "username-reserved"


async def test_a_rename_holds_the_old_name_for_its_player(cluster):
    old, new = name("old"), name("new")
    _, _, player = await create(cluster, username=old, region="eu")
    status, _, renamed = await cluster.call(
        "us",
        "PUT",
        f"/v1/players/{player['id']}/username",
        token=cluster.admin,
        key=unique(),
        body={"username": new},
    )
    assert status == 200, renamed
    assert renamed["username"] == new and renamed["claim"]["status"] == "completed"
    # the old name redirects to the player; nobody else may take it
    status, headers, held = await cluster.call(
        "eu", "GET", f"/v1/usernames/{old}", token=cluster.admin
    )
    assert status == 307 and headers["Location"] == f"/v1/players/{player['id']}"
    assert held["username"] == new
    status, _, other = await create(cluster, username=old, username_required=True)
    assert status == 409 and other["type"] == P + "username-held"
    status, _, availability = await cluster.call(
        "us", "GET", f"/v1/usernames/{old}/availability", token=cluster.admin
    )
    assert availability["status"] == "held"
    # the player may take its old name back
    status, _, back = await cluster.call(
        "eu",
        "PUT",
        f"/v1/players/{player['id']}/username",
        token=cluster.admin,
        key=unique(),
        body={"username": old},
    )
    assert status == 200 and back["username"] == old, back


async def test_availability_names_the_rule(cluster):
    taken = name("carol")
    await create(cluster, username=taken, region="us")
    expected = {
        taken: "taken",
        name("free"): "available",
        "admin": "reserved",
        "a b": "invalid",
        "12345": "invalid",
    }
    results = await asyncio.gather(
        *(
            cluster.call(gw, "GET", f"/v1/usernames/{n}/availability", token=cluster.admin)
            for n in expected
            for gw in ("eu", "us")
        )
    )
    got = [r[2]["status"] for r in results]
    assert got == [s for s in expected.values() for _ in ("eu", "us")], got

"""Players and usernames end to end, through the public gateways of two regions on real
PostgreSQL (the ``cluster`` fixture): creation, lookups, renames with held names, refusals."""

from __future__ import annotations

import asyncio
import collections
import random

import asyncpg
import pytest

from identity.usernames import skeleton
from tests.support import assert_eventually, unique

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

        # The entry gateway knows the player's home at once; another finds it at the owner of
        # the id's slot, once the claim has recorded it there (right after the answer).
        async def readable(gateway=gateway) -> bool:
            status, _, read = await cluster.call(
                gateway, "GET", f"/v1/players/{player['id']}", token=cluster.admin
            )
            assert status in (200, 404), read
            return status == 200 and read["username"] == player["username"]

        await assert_eventually(readable, timeout_s=5)


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
    assert renamed["username"] == new and renamed["claim"]["status"] != "reserving"
    # the old name redirects to the player; nobody else may take it
    status, headers, held = await cluster.call(
        "eu", "GET", f"/v1/usernames/{old}", token=cluster.admin
    )
    assert status == 307 and headers["Location"] == f"/v1/players/{player['id']}", (old, new, held)
    assert held["username"] == new

    # the old name's owner learns it is held in the claim's last step, just after the answer
    async def held() -> bool:
        _, _, availability = await cluster.call(
            "us", "GET", f"/v1/usernames/{old}/availability", token=cluster.admin
        )
        assert availability["status"] in ("taken", "held"), availability
        return availability["status"] == "held"

    await assert_eventually(held, timeout_s=5)
    status, _, other = await create(cluster, username=old, username_required=True)
    assert status == 409 and other["type"] == P + "username-held"
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


def variants(base: str) -> list[str]:
    """Names that look like base: the same letters in capitals, and with look-alike digits
    and letter pairs (UTS #39 confusables: 0 for o, 1 for l, rn for m)."""
    return [base, base.upper(), base.replace("o", "0"), base.replace("l", "1"),
            base.replace("m", "rn")]  # fmt: skip


async def claim_until_decided(cluster, gateway: str, username: str) -> tuple[int, dict]:
    """A strict creation, retried with its key until it is decided (a 503 or a 202 says
    nothing yet)."""
    key = unique()
    for _ in range(200):
        status, _, body = await create(
            cluster, gateway, key=key, username=username, username_required=True
        )
        if status in (201, 409, 422):
            return status, body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{username} undecided: {status} {body}")


@pytest.mark.cluster_regions("eu", "us", "ap")
@pytest.mark.gateway_limits(per_client_rate_per_s=100_000, per_client_burst=100_000)
async def test_contested_names_end_with_exactly_one_owner_each(cluster):
    """1,000 concurrent claims of 100 names (and their look-alikes) through three regions'
    gateways: one winner per skeleton, every other claim told username-taken."""
    bases = [f"holm{unique('')[-6:]}{i:02d}".replace("-", "") for i in range(100)]
    claims = [
        (random.choice(variants(base)), random.choice(("eu", "us", "ap")), base)
        for base in bases
        for _ in range(10)
    ]
    random.shuffle(claims)
    limit = asyncio.Semaphore(128)

    async def claim(username, gateway):
        async with limit:
            return await claim_until_decided(cluster, gateway, username)

    results = await asyncio.gather(*(claim(u, g) for u, g, _ in claims))
    winners = collections.Counter()
    for (username, _, base), (status, body) in zip(claims, results, strict=True):
        if status == 201:
            winners[base] += 1
            assert skeleton(body["username"]) == skeleton(base)
        else:
            assert (status, body["type"]) == (409, P + "username-taken"), (username, body)
    assert winners == dict.fromkeys(bases, 1)
    assert await cluster.audit() == {}


BAD_NAMES = [
    ("", "empty"),
    ("a" * 40, "too-long"),
    ("p\u0430yp\u0430l", "mixed-script"),  # Cyrillic a inside Latin
    ("zero\u200bwidth", "disallowed-character"),
    ("evil\u202egnp", "disallowed-character"),
    ("smile😀", "disallowed-character"),
    ("1234567", "all-digits"),
    ("admin", "reserved"),
    (".dotfirst", "punctuation"),
    ("nul\x00byte", "disallowed-character"),
]


async def identity_rows(cluster) -> tuple:
    counts = []
    for node in cluster.regions.values():
        connection = await asyncpg.connect(node.dsn)
        try:
            counts.append(
                await connection.fetchrow(
                    "SELECT (SELECT count(*) FROM identity.players) AS players,"
                    " (SELECT count(*) FROM identity.claims) AS claims,"
                    " (SELECT count(*) FROM identity.claim_sagas) AS sagas,"
                    " (SELECT count(*) FROM accounts) AS accounts"
                )
            )
        finally:
            await connection.close()
    return tuple(tuple(row) for row in counts)


@pytest.mark.cluster_regions("eu", "us", "ap")
async def test_bad_usernames_are_refused_by_rule_and_write_nothing(cluster):
    digits = f"{random.randrange(10**8):08d}"
    existing = "ay" + digits
    _, _, player = await create(cluster, username=existing, region="eu")
    before = await identity_rows(cluster)
    homoglyph = "\u0430\u0443" + digits  # Cyrillic a and u: one script, the same look
    cases = [*BAD_NAMES, (homoglyph, None)]
    for raw, rule in cases:
        status, _, problem = await create(
            cluster, "us", username=raw, username_required=True, currencies=["EUR"]
        )
        expected = "username-reserved" if rule == "reserved" else "username-invalid"
        if rule is None:  # a homoglyph of an existing name: taken
            assert (status, problem["type"]) == (409, P + "username-taken"), (raw, problem)
        else:
            assert (status, problem["type"], problem["rule"]) == (422, P + expected, rule), raw
            status, _, problem = await cluster.call(
                "eu",
                "PUT",
                f"/v1/players/{player['id']}/username",
                token=cluster.admin,
                key=unique(),
                body={"username": raw},
            )
            assert (status, problem.get("rule")) == (422, rule), (raw, problem)
    # the strict homoglyph creation left a refused player row and its claim record behind:
    # nothing anyone sees (no account, no username, no claim at the owner)
    after = await identity_rows(cluster)
    assert [(row[1], row[3]) for row in after] == [(row[1], row[3]) for row in before]
    status, _, same = await cluster.call(
        "us", "GET", f"/v1/players/{player['id']}", token=cluster.admin
    )
    assert same["username"] == existing and same["version"] == 1
    assert await cluster.audit() == {}


async def test_who_sees_and_renames_a_player(cluster):
    _, _, player = await create(cluster, username=name("erin"), operator="op-1", region="eu")
    pid = player["id"]
    stranger = cluster.keys.mint("someone", "wallet", accounts=["eu-x"])
    own = cluster.keys.mint("erin", "wallet", accounts=["eu-x"], player=pid)
    server = cluster.keys.mint("server-1", "game:server", operator="op-1")
    other_server = cluster.keys.mint("server-2", "game:server", operator="op-2")
    for token, full in ((stranger, False), (own, True), (server, True), (other_server, False)):
        status, _, seen = await cluster.call("us", "GET", f"/v1/players/{pid}", token=token)
        assert status == 200
        assert ("accounts" in seen) is full, seen
        if not full:
            assert set(seen) == {"id", "username", "display_name"}
    for token, allowed in ((stranger, False), (other_server, False), (own, True)):
        status, _, answer = await cluster.call(
            "eu",
            "PUT",
            f"/v1/players/{pid}/username",
            token=token,
            key=unique(),
            body={"username": name("erin")},
        )
        assert (status == 200) is allowed, answer
    status, _, answer = await create(cluster, token=other_server, operator="op-1")
    assert status == 403, answer


async def test_renames_are_rate_limited_per_player(cluster):
    _, _, player = await create(cluster, username=name("frank"), region="us")
    statuses = []
    for _ in range(4):
        status, headers, answer = await cluster.call(
            "us",
            "PUT",
            f"/v1/players/{player['id']}/username",
            token=cluster.admin,
            key=unique(),
            body={"username": name("frank")},
        )
        statuses.append(status)
    assert statuses == [200, 200, 200, 429], statuses
    assert answer["type"] == P + "rename-rate-limited" and int(headers["Retry-After"]) > 0


@pytest.mark.gateway_limits(lookup_rate_per_s=0.01, lookup_burst=3)
async def test_lookups_have_a_budget_of_their_own(cluster):
    token = cluster.keys.mint(unique("prober"), "wallet", accounts=["eu-x"])
    statuses = [
        (await cluster.call("eu", "GET", f"/v1/usernames/{name()}/availability", token=token))[0]
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429], statuses
    # the caller's other requests keep their own budget
    status, _, _ = await cluster.call("eu", "GET", "/v1/players/pl_" + "0" * 26, token=token)
    assert status == 404


@pytest.mark.lookups_from_view
async def test_public_lookups_come_from_the_regions_view_of_players(cluster):
    """With lookups_from_view, a public username lookup is answered from the entry region's
    view of every region's players (kept from their events): no hop to the name's owner."""
    name = f"viewed{unique('')[-6:]}".replace("-", "")
    status, _, player = await create(cluster, username=name, currencies=["EUR"], region="eu")
    assert status == 201, player
    public = cluster.keys.mint("someone", "wallet", accounts=[])

    async def seen_from_us() -> bool:
        got, _, profile = await cluster.call("us", "GET", f"/v1/usernames/{name}", token=public)
        return got == 200 and profile["id"] == player["id"]

    await assert_eventually(seen_from_us, timeout_s=10, interval_s=0.1)
    # Proof of the path: a row only the view has is found by public lookups, and not by an
    # admin's (the owner's claim, which has no such name).
    ghost = f"ghost{unique('')[-6:]}".replace("-", "")
    connection = await asyncpg.connect(cluster.regions["us"].dsn)
    try:
        await connection.execute(
            "INSERT INTO identity.player_views (player_id, home_region, username, skeleton,"
            " status, version) VALUES ($1, 'eu', $2, $3, 'active', 1)",
            "pl_" + "g" * 26,
            ghost,
            skeleton(ghost),
        )
    finally:
        await connection.close()
    got, _, profile = await cluster.call("us", "GET", f"/v1/usernames/{ghost}", token=public)
    assert got == 200 and profile == {"id": "pl_" + "g" * 26, "username": ghost,
                                      "display_name": None}  # fmt: skip
    got, _, _ = await cluster.call("us", "GET", f"/v1/usernames/{ghost}", token=cluster.admin)
    assert got == 404

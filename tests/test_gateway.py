"""The gateway end to end: two regions (eu, us), each with a real ledger node on its own database
and its own gateway, a YAML directory, a real Redis, and tokens from the development keys.

Proved: an account of either region is answered the same through either region's gateway; the
auth cases of the issue get 401 or 403 (no token, expired, wrong audience, alg none, a player on
another's account, a game server outside its operator's players); a client over its rate limit
gets 429 with Retry-After while another is unaffected; a stopped region gets 503 with
Retry-After within a bound while the other region is unaffected, and is served again without a
gateway restart; keys are namespaced per client; the OpenAPI document lists exactly the routes.
"""

from __future__ import annotations

import time

import jwt
import pytest

from gateway import players, webhooks
from gateway.app import ROUTES
from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER
from tests.support import LIMIT_BURST, assert_eventually, region_status, unique

P = "urn:regiongate:problem:"
BOUND_S = 5.0


async def test_every_gateway_serves_every_account(cluster):
    eu_account = await cluster.account("eu", fund=500)
    us_account = await cluster.account("us", fund=700)
    for gateway in ("eu", "us"):
        for account, expected in ((eu_account, 500), (us_account, 700)):
            status, _, balance = await cluster.call(
                gateway, "GET", f"/v1/accounts/{account}/balance", token=cluster.admin
            )
            assert status == 200 and balance["posted"] == expected


async def test_players_and_game_servers_are_held_to_their_scopes(cluster):
    alice = await cluster.account("eu", fund=100)
    bob = await cluster.account("eu", fund=100)
    other_operators_player = await cluster.account("us", operator="op-2", fund=100)
    player = cluster.keys.mint("alice", "wallet", accounts=[alice])
    game = cluster.keys.mint("gs-1", "game:server", operator="op-1")
    expired = cluster.keys.mint("alice", "wallet", accounts=[alice], lifetime_s=-120)
    wrong_audience = cluster.keys.mint("alice", "wallet", accounts=[alice], aud="elsewhere")
    alg_none = jwt.encode(
        {
            "sub": "alice",
            "aud": DEV_AUDIENCE,
            "iss": DEV_ISSUER,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "scope": "admin",
        },
        None,
        algorithm="none",
    )
    bet = {"account_id": bob, "amount": 5, "currency": "EUR", "reference": unique("r")}
    cases = [
        ("no token", None, "GET", f"/v1/accounts/{alice}/balance", None, 401),
        ("expired", expired, "GET", f"/v1/accounts/{alice}/balance", None, 401),
        ("wrong audience", wrong_audience, "GET", f"/v1/accounts/{alice}/balance", None, 401),
        ("alg none", alg_none, "GET", f"/v1/accounts/{alice}/balance", None, 401),
        ("own account", player, "GET", f"/v1/accounts/{alice}/balance", None, 200),
        ("another player's account", player, "GET", f"/v1/accounts/{bob}/balance", None, 403),
        (
            "money out of another's account",
            player,
            "POST",
            "/v1/transfers",
            {"debit_account_id": bob, "credit_account_id": alice, "amount": 1, "currency": "EUR"},
            403,
        ),
        ("a player placing bets", player, "POST", "/v1/bets", bet, 403),
        ("a game server for its player", game, "POST", "/v1/bets", bet, 201),
        (
            "a game server outside its operator",
            game,
            "POST",
            "/v1/bets",
            dict(bet, account_id=other_operators_player),
            403,
        ),
        ("a player creating accounts", player, "POST", "/v1/accounts", {"currency": "EUR"}, 403),
    ]
    for name, token, method, path, body, expected in cases:
        status, headers, payload = await cluster.call(
            "eu", method, path, token=token, body=body, key=unique()
        )
        assert status == expected, (name, payload)
        if status == 401:
            assert payload["type"] == P + "unauthenticated"
            assert headers["WWW-Authenticate"].startswith("Bearer")
        if status == 403:
            assert payload["type"] == P + "forbidden"


async def test_a_client_over_its_limit_gets_429_and_others_do_not(cluster):
    alice = await cluster.account("eu")
    greedy = cluster.keys.mint("greedy", "wallet", accounts=[alice])
    statuses = []
    for _ in range(LIMIT_BURST + 5):
        status, headers, _ = await cluster.call("eu", "GET", f"/v1/accounts/{alice}", token=greedy)
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            break
    assert statuses[-1] == 429 and statuses[:-1] == [200] * (len(statuses) - 1)
    polite = cluster.keys.mint("polite", "wallet", accounts=[alice])
    assert (await cluster.call("eu", "GET", f"/v1/accounts/{alice}", token=polite))[0] == 200


async def test_a_stopped_region_gets_503_and_comes_back(cluster):
    eu_account = await cluster.account("eu")
    us_account = await cluster.account("us")
    await cluster.regions["us"].stop()
    started = time.monotonic()
    status, headers, payload = await cluster.call(
        "eu", "GET", f"/v1/accounts/{us_account}", token=cluster.admin
    )
    assert status == 503 and payload["type"] == P + "region-unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert time.monotonic() - started < BOUND_S
    assert (await cluster.call("eu", "GET", f"/v1/accounts/{eu_account}", token=cluster.admin))[
        0
    ] == 200
    await cluster.regions["us"].start()

    async def served_again() -> bool:
        return (await cluster.call("eu", "GET", f"/v1/accounts/{us_account}", token=cluster.admin))[
            0
        ] == 200

    await assert_eventually(served_again, timeout_s=10)


async def test_idempotency_keys_are_per_client(cluster):
    alice = await cluster.account("eu", fund=100)
    bob = await cluster.account("eu", fund=100)
    transfer = {"credit_account_id": "eu-clearing-EUR", "amount": 10, "currency": "EUR"}
    key = unique("shared")
    as_alice = cluster.keys.mint("alice", "wallet", accounts=[alice])
    as_bob = cluster.keys.mint("bob", "wallet", accounts=[bob])
    first = await cluster.call(
        "eu",
        "POST",
        "/v1/transfers",
        token=as_alice,
        key=key,
        body=dict(transfer, debit_account_id=alice),
    )
    again = await cluster.call(
        "eu",
        "POST",
        "/v1/transfers",
        token=as_alice,
        key=key,
        body=dict(transfer, debit_account_id=alice),
    )
    other = await cluster.call(
        "eu",
        "POST",
        "/v1/transfers",
        token=as_bob,
        key=key,
        body=dict(transfer, debit_account_id=bob),
    )
    assert first[0] == again[0] == other[0] == 201
    assert again[1].get("Idempotent-Replayed") == "true" and again[2]["id"] == first[2]["id"]
    assert other[2]["id"] != first[2]["id"]


async def test_ledger_problems_pass_through_and_cross_region_transfers_run_a_saga(cluster):
    alice = await cluster.account("eu", fund=10)
    us_player = await cluster.account("us")
    token = cluster.keys.mint("alice", "wallet", accounts=[alice])
    status, _, problem = await cluster.call(
        "us",
        "POST",
        "/v1/transfers",
        token=token,
        key=unique(),
        body={
            "debit_account_id": alice,
            "credit_account_id": "eu-clearing-EUR",
            "amount": 11,
            "currency": "EUR",
        },
    )
    assert status == 422 and problem["type"] == P + "insufficient-funds"
    status, _, problem = await cluster.call(
        "eu",
        "POST",
        "/v1/transfers",
        token=token,
        key=unique(),
        body={
            "debit_account_id": alice,
            "credit_account_id": us_player,
            "amount": 1,
            "currency": "EUR",
        },
    )
    assert status == 201, problem
    transfer = problem
    assert transfer["type"] == "cross_region" and transfer["status"] == "completed"
    # Any region's gateway shows it, to either side's owner.
    bob = cluster.keys.mint("bob", "wallet", accounts=[us_player])
    status, _, shown = await cluster.call("us", "GET", f"/v1/transfers/{transfer['id']}", token=bob)
    assert status == 200 and shown["status"] == "completed"
    status, _, balance = await cluster.call(
        "us", "GET", f"/v1/accounts/{us_player}/balance", token=bob
    )
    assert status == 200 and balance["posted"] == 1


async def test_openapi_lists_exactly_the_routes(cluster):
    status, _, document = await cluster.call("eu", "GET", "/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = set()
    for method, path, _ in ROUTES + players.ROUTES + webhooks.ROUTES:
        if "{suffix:" in path:
            base = path.split("{suffix:")[0]
            served |= {(method, base + "/balance"), (method, base + "/transfers")}
        elif "{action:" in path:
            head, _, tail = path.partition("{action:")
            choices, _, rest = tail.partition("}")
            served |= {(method, head + choice + rest) for choice in choices.split("|")}
        else:
            served.add((method, path))
    assert documented == served


async def test_queries_pass_through_signed_intact(cluster):
    """as_of (with ':' and '+') and history cursors reach the ledger with a valid signature."""
    account = await cluster.account("eu", fund=5)
    for _ in range(3):
        await cluster.call(
            "eu",
            "POST",
            "/v1/transfers",
            token=cluster.admin,
            key=unique(),
            body={
                "debit_account_id": "eu-clearing-EUR",
                "credit_account_id": account,
                "amount": 1,
                "currency": "EUR",
            },
        )
    status, _, balance = await cluster.call(
        "us",
        "GET",
        f"/v1/accounts/{account}/balance?as_of=2000-01-01T00:00:00%2B00:00",
        token=cluster.admin,
    )
    assert status == 200 and balance["posted"] == 0, balance
    status, _, page = await cluster.call(
        "us", "GET", f"/v1/accounts/{account}/transfers?limit=2", token=cluster.admin
    )
    assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
    status, _, rest = await cluster.call(
        "us",
        "GET",
        f"/v1/accounts/{account}/transfers?limit=2&cursor={page['next_cursor']}",
        token=cluster.admin,
    )
    assert status == 200 and len(rest["items"]) == 2


async def test_holds_are_posted_and_voided_through_the_gateway(cluster):
    alice = await cluster.account("eu", fund=1000)
    bob = await cluster.account("eu")
    as_alice = cluster.keys.mint("alice", "wallet", accounts=[alice])
    as_bob = cluster.keys.mint("bob", "wallet", accounts=[bob])
    hold = {
        "debit_account_id": alice,
        "credit_account_id": bob,
        "amount": 300,
        "currency": "EUR",
        "pending": True,
        "timeout_s": 60,
    }
    status, _, first = await cluster.call(
        "us", "POST", "/v1/transfers", token=as_alice, key=unique(), body=hold
    )
    assert status == 201 and first["status"] == "pending"
    status, _, seen = await cluster.call("eu", "GET", f"/v1/transfers/{first['id']}", token=as_bob)
    assert status == 200 and seen["id"] == first["id"]  # the credit side may read it
    status, _, _ = await cluster.call(
        "eu",
        "POST",
        f"/v1/transfers/{first['id']}/post",
        token=as_bob,
        key=unique(),
        body={"amount": 100},
    )
    assert status == 403  # only the debit side posts its hold
    status, _, posted = await cluster.call(
        "us",
        "POST",
        f"/v1/transfers/{first['id']}/post",
        token=as_alice,
        key=unique(),
        body={"amount": 100},
    )
    assert status == 201 and posted["amount"] == 100
    status, _, second = await cluster.call(
        "eu", "POST", "/v1/transfers", token=as_alice, key=unique(), body=hold
    )
    status, _, voided = await cluster.call(
        "eu", "POST", f"/v1/transfers/{second['id']}/void", token=as_alice, key=unique()
    )
    assert status == 201 and voided["status"] == "voided"
    status, _, balance = await cluster.call(
        "eu", "GET", f"/v1/accounts/{alice}/balance", token=as_alice
    )
    assert (balance["posted"], balance["pending_debits"]) == (900, 0)
    stranger = cluster.keys.mint("eve", "wallet", accounts=[])
    status, _, _ = await cluster.call("eu", "GET", f"/v1/transfers/{first['id']}", token=stranger)
    assert status == 404  # another's transfer is not revealed


async def test_bad_bodies_get_400_before_any_ledger_call(cluster):
    alice = await cluster.account("eu", fund=10)
    as_alice = cluster.keys.mint("alice", "wallet", accounts=[alice])
    url_post = cluster.gateways["eu"].make_url(f"/v1/transfers/eu-t-{unique()}/post")
    headers = {
        "Authorization": f"Bearer {as_alice}",
        "Idempotency-Key": unique(),
        "Content-Type": "application/json",
    }
    async with cluster.session.post(url_post, data=b'{"amount": ', headers=headers) as response:
        assert response.status == 400
        assert (await response.json(content_type=None))["type"] == P + "malformed-json"
    status, _, problem = await cluster.call(
        "eu",
        "POST",
        "/v1/accounts",
        token=cluster.admin,
        key=unique(),
        body={"currency": "EUR", "operator": "op-1", "metadata": ["not", "a", "map"]},
    )
    assert status == 400 and problem["field"] == "metadata"


async def test_a_ledger_503_keeps_its_retry_after_through_the_gateway(cluster):
    """A transfer towards a region the directory marks down: the debit side's ledger refuses it
    with 503 and Retry-After, and the gateway passes both on."""
    payer = await cluster.account("eu", fund=50)
    payee = await cluster.account("us")
    body = {"debit_account_id": payer, "credit_account_id": payee, "amount": 5, "currency": "EUR"}
    with region_status(cluster.regions["eu"].overrides["directory_file"], "us", "down"):

        async def refused() -> bool:
            status, headers, problem = await cluster.call(
                "eu", "POST", "/v1/transfers", token=cluster.admin, key=unique(), body=body
            )
            return (
                status == 503
                and problem["type"] == P + "region-unavailable"
                and headers.get("Retry-After") == "30"
            )

        await assert_eventually(refused, timeout_s=10)


async def test_a_compensated_cross_region_transfer_is_a_documented_problem(cluster):
    """The problem carries the compensated saga as its transfer member; cluster.call checks
    every answer against the served OpenAPI, which once refused any extension member."""
    alice = await cluster.account("eu", fund=10)
    token = cluster.keys.mint("alice", "wallet", accounts=[alice])
    missing = "us-0000000000000000000000missing"
    status, _, problem = await cluster.transfer("us", alice, missing, 1, token=token)
    assert status == 404 and problem["transfer"]["status"] == "compensated", problem
    assert (await cluster.call("eu", "GET", f"/v1/accounts/{alice}/balance", token=token))[2][
        "available"
    ] == 10


@pytest.mark.gateway_limits(per_account_rate_per_s=0.1, per_account_burst=10)
async def test_a_refused_caller_spends_only_its_own_budget(cluster):
    """A player reading another's balance is refused (403), then limited (429) on its own
    client budget; the other account's owner is never limited by it. Deposits from the one
    clearing account spend each credited player's limit, not the region's clearing account's."""
    alice = await cluster.account("eu")
    bob = await cluster.account("eu")
    mallory = cluster.keys.mint("mallory", "wallet", accounts=[alice])
    statuses = [
        (await cluster.call("eu", "GET", f"/v1/accounts/{bob}/balance", token=mallory))[0]
        for _ in range(LIMIT_BURST + 10)
    ]
    assert set(statuses) == {403, 429} and statuses[0] == 403, statuses
    owner = cluster.keys.mint("bob", "wallet", accounts=[bob])
    reads = [
        (await cluster.call("us", "GET", f"/v1/accounts/{bob}/balance", token=owner))[0]
        for _ in range(5)
    ]
    assert reads == [200] * 5
    players = [await cluster.account("eu") for _ in range(12)]
    deposits = [
        (await cluster.transfer("eu", "eu-clearing-EUR", player, 5))[0] for player in players
    ]
    assert deposits == [201] * len(players)


async def test_the_back_office_freezes_unfreezes_and_closes_through_any_gateway(cluster):
    alice = await cluster.account("eu", fund=10)
    player = cluster.keys.mint("alice", "wallet", accounts=[alice])
    path = f"/v1/accounts/{alice}/status"

    async def set_status(gateway, token, status):
        return await cluster.call(gateway, "POST", path, token=token, body={"status": status})

    assert (await set_status("us", player, "frozen"))[0] == 403
    status, _, account = await set_status("us", cluster.admin, "frozen")
    assert status == 200 and account["status"] == "frozen"
    withdrawal = {
        "debit_account_id": alice,
        "credit_account_id": "eu-clearing-EUR",
        "amount": 10,
        "currency": "EUR",
    }
    status, _, problem = await cluster.call(
        "eu", "POST", "/v1/transfers", token=player, key=unique(), body=withdrawal
    )
    assert status == 422 and problem["type"] == P + "account-frozen"
    assert (await set_status("eu", cluster.admin, "closed"))[2]["type"] == P + "account-has-balance"
    assert (await set_status("eu", cluster.admin, "active"))[2]["status"] == "active"
    assert (
        await cluster.call(
            "us", "POST", "/v1/transfers", token=player, key=unique(), body=withdrawal
        )
    )[0] == 201
    status, _, account = await set_status("us", cluster.admin, "closed")
    assert status == 200 and account["status"] == "closed"
    assert (await set_status("us", cluster.admin, "bogus"))[0] == 400


async def test_webhook_endpoints_are_for_admins_and_belong_to_a_region(cluster):
    hook = {"url": "https://hooks.example.com/regiongate", "event_types": ["transfer.*"]}
    wallet = cluster.keys.mint("bob", "wallet", accounts=[])
    status, _, problem = await cluster.call(
        "eu", "POST", "/v1/webhook-endpoints", token=wallet, body=hook
    )
    assert status == 403, problem
    status, _, endpoint = await cluster.call(
        "eu", "POST", "/v1/webhook-endpoints?region=us", token=cluster.admin, body=hook
    )
    assert status == 201 and endpoint["secret"].startswith("whsec_"), endpoint
    status, _, listed = await cluster.call(
        "us", "GET", "/v1/webhook-endpoints", token=cluster.admin
    )
    assert status == 200 and [e["id"] for e in listed["endpoints"]] == [endpoint["id"]]
    assert "secret" not in listed["endpoints"][0]  # shown at creation and rotation only
    status, _, problem = await cluster.call(
        "eu", "GET", f"/v1/webhook-endpoints/{endpoint['id']}", token=cluster.admin
    )
    assert status == 404 and problem["type"].endswith("webhook-endpoint-not-found")
    for body, field in (
        ({**hook, "url": "http://hooks.example.com/"}, "url"),
        ({**hook, "event_types": []}, "event_types"),
        ({**hook, "url": "https://user:pw@hooks.example.com/"}, "url"),
        # The region's own network is out of a webhook's reach (allow_private_addresses).
        ({**hook, "url": "https://127.0.0.1:8443/"}, "url"),
        ({**hook, "url": "https://10.1.2.3/hooks"}, "url"),
        ({**hook, "url": "https://169.254.169.254/latest/meta-data"}, "url"),
        ({**hook, "url": "https://[::1]/"}, "url"),
    ):
        status, _, problem = await cluster.call(
            "eu", "POST", "/v1/webhook-endpoints", token=cluster.admin, body=body
        )
        assert status == 400 and problem["field"] == field, problem
    status, _, problem = await cluster.call(
        "eu", "GET", "/v1/webhook-endpoints?region=zz", token=cluster.admin
    )
    assert status == 400 and problem["field"] == "region", problem

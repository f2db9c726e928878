"""The region router against real ledger nodes of two regions (eu and us, each on its own
database) and a YAML directory: every account is answered by its home ledger whichever region
routes it; a dead node is ejected and a safe call goes on to a live one; a region that stops
gets RegionUnavailable within a bounded time while the other is unaffected, and is served again
when it comes back, without restarting the router; a re-home override is followed."""

from __future__ import annotations

import time

import pytest

from infra.services import free_port
from region_router.directory import LedgerEndpoint, Region, RegionStatus
from region_router.http_pool import HttpPool
from region_router.router import RegionRouter, RegionUnavailable, RouterConfig, UnroutableAccount
from region_router.yaml_directory import YamlDirectory, write_directory_file
from tests.support import RegionNode, assert_eventually, unique

BOUND_S = 5.0


@pytest.fixture
async def world(postgres, keyring, tmp_path):
    regions = {}
    for code in ("eu", "us"):
        regions[code] = RegionNode(
            code, postgres.create_database(unique(f"router_{code}").replace("-", "_")[:40]), keyring
        )
        await regions[code].start()
    directory_file = tmp_path / "directory.yaml"
    dead = LedgerEndpoint("eu", "eu-dead", f"http://127.0.0.1:{free_port()}")

    def write(overrides=None, eu_status=RegionStatus.ACTIVE):
        write_directory_file(
            directory_file,
            [Region("eu", eu_status, ("us",)), Region("us", RegionStatus.ACTIVE, ("eu",))],
            [
                dead,
                LedgerEndpoint("eu", "eu-1", regions["eu"].url),
                LedgerEndpoint("us", "us-1", regions["us"].url),
            ],
            overrides or {},
        )

    write()
    directory = YamlDirectory(directory_file, poll_ms=20)
    await directory.start()
    pool = HttpPool()
    router = RegionRouter(
        directory=directory,
        key=keyring.signing_key,
        pool=pool,
        config=RouterConfig(
            local_region="eu",
            attempt_timeout_ms=1000,
            call_timeout_ms=3000,
            eject_after_failures=1,
            eject_for_ms=300,
        ),
    )
    yield router, regions, write
    await pool.close()
    await directory.stop()
    for region in regions.values():
        await region.stop()


async def new_account(router, region: str) -> str:
    response = await router.call_in_region(
        region, "POST", "/v1/accounts", {"currency": "EUR"}, idempotency_key=unique()
    )
    assert response.status == 201, response.body
    return response.json()["id"]


async def test_each_account_is_served_by_its_home_ledger(world):
    router, _, _ = world
    eu_account = await new_account(router, "eu")
    us_account = await new_account(router, "us")
    assert eu_account.startswith("eu-") and us_account.startswith("us-")
    assert router.route(eu_account).local and not router.route(us_account).local
    for account in (eu_account, us_account):
        response = await router.call(account, "GET", f"/v1/accounts/{account}/balance")
        assert response.status == 200 and response.json()["account_id"] == account
    with pytest.raises(UnroutableAccount):
        router.route("zz-nowhere")
    with pytest.raises(UnroutableAccount):
        router.route("not an id")


async def test_a_dead_node_is_ejected_and_safe_calls_go_on(world):
    router, _, _ = world
    account = await new_account(router, "eu")
    for _ in range(6):
        response = await router.call(account, "GET", f"/v1/accounts/{account}")
        assert response.status == 200
    assert router.stats.ejections >= 1
    assert all(e.node_id == "eu-1" for e in router.route(account).endpoints)


async def test_a_stopped_region_fails_fast_and_comes_back(world):
    router, regions, _ = world
    eu_account = await new_account(router, "eu")
    us_account = await new_account(router, "us")
    await regions["us"].stop()
    started = time.monotonic()
    with pytest.raises(RegionUnavailable) as raised:
        await router.call(us_account, "GET", f"/v1/accounts/{us_account}")
    assert time.monotonic() - started < BOUND_S
    assert raised.value.region == "us" and raised.value.retry_after_s >= 1
    assert (await router.call(eu_account, "GET", f"/v1/accounts/{eu_account}")).status == 200
    await regions["us"].start()

    async def served_again() -> bool:
        try:
            return (
                await router.call(us_account, "GET", f"/v1/accounts/{us_account}")
            ).status == 200
        except RegionUnavailable:
            return False

    await assert_eventually(served_again, timeout_s=BOUND_S)


async def test_region_marked_down_is_refused_at_once(world):
    router, _, write = world
    account = await new_account(router, "eu")
    write(eu_status=RegionStatus.DOWN)

    async def refused() -> bool:
        try:
            router.route(account)
        except RegionUnavailable:
            return True
        return False

    await assert_eventually(refused, timeout_s=BOUND_S)


async def test_a_rehome_override_is_followed(world):
    router, _, write = world
    account = await new_account(router, "eu")
    write(overrides={account: "us"})

    async def followed() -> bool:
        return router.route(account).region == "us"

    await assert_eventually(followed, timeout_s=BOUND_S)

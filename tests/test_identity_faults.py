"""Identity's fault matrix, on three regions as separate processes joined by WAN links: kill -9
the player's home between reserve and bind and between bind and confirm, kill -9 the name's
owner with claims in flight, cut the link between home and owner. After healing, every player
has exactly one username, no name has two owners, and the cross-region audit (money and
identity) is clean."""

from __future__ import annotations

import asyncio

import pytest

from identity.saga import CRASH_AT_ENV
from identity.usernames import UsernameRules, check
from infra.local import even_slot_owners
from region_router.http_pool import UpstreamConnectionError
from region_router.ledger_client import LedgerClient
from tests.support import (
    SERVICE_KEYS_TEXT,
    SagaWorld,
    assert_eventually,
    node_ready,
    process_dead,
    unique,
)
from wire.ids import identity_slot

REGIONS = ("eu", "us", "ap")
RULES = UsernameRules()


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    world = SagaWorld(
        tmp_path_factory.mktemp("identity-faults"), postgres, SERVICE_KEYS_TEXT, regions=REGIONS
    )
    world.start()
    yield world
    world.stop()


@pytest.fixture
async def clients(world, keyring, ledger_pool):
    clients = world.clients(keyring.signing_key, ledger_pool)
    for client in clients.values():
        await assert_eventually(node_ready(client))
    return clients


def owned_by(region: str, prefix: str = "fault") -> str:
    """A fresh username whose slot the region owns."""
    owners = even_slot_owners(list(REGIONS))
    while True:
        name = f"{prefix}{unique('')[-8:]}".replace("-", "")
        if owners[identity_slot(check(name, RULES).skeleton)] == region:
            return name


async def create(client: LedgerClient, username: str, key: str):
    return await client.post(
        "/v1/identity/players",
        {"username": username, "currencies": ["EUR"]},
        idempotency_key=key,
        timeout_s=10,
    )


async def wait_active(client: LedgerClient, username: str, key: str) -> dict:
    """Retry the creation with its key until the player is active; its final view."""
    final = {}

    async def active() -> bool:
        try:
            response = await create(client, username, key)
        except (UpstreamConnectionError, TimeoutError):
            return False
        final.update(response.json())
        return response.status == 201

    await assert_eventually(active, timeout_s=30, interval_s=0.2)
    return final


async def assert_clean(world: SagaWorld) -> None:
    async def audited() -> bool:
        return await world.audit(grace_s=5) == {}

    await assert_eventually(audited, timeout_s=20, interval_s=0.5)


@pytest.mark.parametrize("point", ["reserved", "bound", "confirmed"])
async def test_kill_the_home_between_reserve_and_confirm(world, clients, point):
    username = owned_by("us")
    key = unique("home")
    world.kill("eu")
    world.restart("eu", env={CRASH_AT_ENV: point})
    await assert_eventually(node_ready(clients["eu"]))
    try:
        response = await create(clients["eu"], username, key)
    except (UpstreamConnectionError, TimeoutError):
        pass  # died before answering: reserved, or bound
    else:
        # The answer comes at the bind; the confirm, and the crash after it, come after.
        assert point == "confirmed" and response.status == 201, (point, response.status)
    await assert_eventually(process_dead(world, "eu"), timeout_s=10)
    await asyncio.sleep(1.5)  # past the owner's reservation lease: its reaper asks a dead home
    world.restart("eu")
    await assert_eventually(node_ready(clients["eu"]))
    player = await wait_active(clients["eu"], username, key)
    assert player["username"] == username and player["username_generated"] is False
    assert set(player["accounts"]) == {"EUR"}
    await assert_clean(world)


async def test_kill_the_owner_with_claims_in_flight(world, clients):
    names = [(owned_by("ap"), unique("owner")) for _ in range(20)]
    requests = [
        asyncio.ensure_future(create(clients[region], name, key))
        for region, (name, key) in zip(("eu", "us") * 10, names, strict=True)
    ]
    await asyncio.sleep(0.05)
    world.kill("ap")
    await asyncio.gather(*requests, return_exceptions=True)
    await asyncio.sleep(1.0)
    world.restart("ap")
    await assert_eventually(node_ready(clients["ap"]))
    for region, (name, key) in zip(("eu", "us") * 10, names, strict=True):
        player = await wait_active(clients[region], name, key)
        assert player["username"] == name
    await assert_clean(world)


async def test_a_cut_between_home_and_owner_heals_forward(world, clients):
    username = owned_by("us")
    key = unique("cut")
    world.link("eu", "us", "cut")
    try:
        response = await create(clients["eu"], username, key)
        assert response.status == 202, response.json()
        assert response.json()["status"] == "creating"
        await asyncio.sleep(1.5)
    finally:
        world.link("eu", "us", "heal")
    player = await wait_active(clients["eu"], username, key)
    assert player["username"] == username
    await assert_clean(world)

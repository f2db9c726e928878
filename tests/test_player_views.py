"""Each region's view of every region's players, kept from their events: three regions as
separate processes publishing to one durable Redis; a player created and renamed in one region
is found by username in every region's view (no WAN hop), its old name no longer; a redelivered
or older event changes nothing."""

from __future__ import annotations

import asyncpg
import pytest

from events.streams import Event
from infra.services import RedisServer, free_port
from ledger_node.player_views import apply
from tests.support import SERVICE_KEYS_TEXT, SagaWorld, assert_eventually, node_ready, unique

REGIONS = ("eu", "us", "ap")


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("player-views")
    redis_server = RedisServer(root / "redis", free_port(), durable=True)
    redis_server.start()
    world = SagaWorld(
        root / "world",
        postgres,
        SERVICE_KEYS_TEXT,
        regions=REGIONS,
        events={"redis_url": redis_server.url, "poll_interval_ms": 5},
    )
    world.start()
    yield world
    world.stop()
    redis_server.stop()


async def _view(client, username: str):
    response = await client.get(f"/v1/identity/views?username={username}")
    return response.json() if response.status == 200 else None


async def test_every_region_sees_a_player_created_and_renamed_elsewhere(
    world, keyring, ledger_pool
):
    clients = world.clients(keyring.signing_key, ledger_pool)
    for client in clients.values():
        await assert_eventually(node_ready(client))
    name = f"viewer{unique('')[-8:]}".replace("-", "")
    created = await clients["us"].post(
        "/v1/identity/players",
        {"username": name, "currencies": ["EUR"], "display_name": "The Viewer"},
        idempotency_key=unique("p"),
        timeout_s=10,
    )
    assert created.status in (201, 202), created.body
    player_id = created.json()["id"]

    async def everywhere(username: str, version: int | None = None):
        async def seen() -> bool:
            views = [await _view(clients[r], username) for r in REGIONS]
            return all(
                v is not None and v["player_id"] == player_id
                and (version is None or v["version"] >= version)
                for v in views
            )  # fmt: skip

        await assert_eventually(seen, timeout_s=20, interval_s=0.1)

    await everywhere(name.upper())  # any look-alike of the name finds it
    view = await _view(clients["ap"], name)
    assert view["home_region"] == "us" and view["display_name"] == "The Viewer"
    renamed = await clients["us"].post(
        f"/v1/identity/players/{player_id}/username",
        {"username": name + "x"},
        idempotency_key=unique("r"),
        timeout_s=10,
    )
    assert renamed.status in (200, 202), renamed.body
    await everywhere(name + "x", version=view["version"] + 1)
    for region in REGIONS:
        assert await _view(clients[region], name) is None  # the old name: ask its owner

    # A redelivered event, or an older one arriving late, changes nothing.
    connection = await asyncpg.connect(world.dsns["eu"])
    try:
        stale = Event(
            id=f"ev_stale_{player_id}",
            type="player.created",
            region="us",
            aggregate_type="player",
            aggregate_id=player_id,
            version=1,
            time="2026-01-01T00:00:00Z",
            data={"player_id": player_id, "username": name},
        )
        async with connection.transaction():
            assert await apply(connection, stale)
        async with connection.transaction():
            assert not await apply(connection, stale)
        current = await connection.fetchval(
            "SELECT username FROM identity.player_views WHERE player_id = $1", player_id
        )
        assert current == name + "x"
    finally:
        await connection.close()

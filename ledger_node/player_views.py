"""Each region's view of every region's players (identity.player_views), kept from their
``player`` streams by an ordered consumer group per region: a username lookup can be answered
here without a WAN hop where a moment's staleness is allowed (docs/events.md). Each event is
applied once (the inbox) and a row only moves to a higher version, so redeliveries and any
order of arrival leave the newest state."""

from __future__ import annotations

import logging

import asyncpg
import redis.asyncio as aioredis

from events.config import EventsConfig
from events.consumer import INBOX_SCHEMA, Consumer, ConsumerConfig, inbox_first
from events.streams import Event, stream_name
from identity.usernames import skeleton

log = logging.getLogger("regiongate.player_views")

INBOX = "player-views"
UPSERT = """
INSERT INTO identity.player_views
    (player_id, home_region, username, skeleton, display_name, status, version)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (player_id) DO UPDATE
SET username = coalesce(EXCLUDED.username, player_views.username),
    skeleton = coalesce(EXCLUDED.skeleton, player_views.skeleton),
    display_name = coalesce(EXCLUDED.display_name, player_views.display_name),
    status = EXCLUDED.status, version = EXCLUDED.version, updated_at = now()
WHERE player_views.version < EXCLUDED.version
"""


async def apply(connection: asyncpg.Connection, event: Event) -> bool:
    """Apply one player event to the view, in the caller's transaction; False if it was
    applied before."""
    if not await inbox_first(connection, INBOX, event.id):
        return False
    data = event.data
    username = data.get("username")
    await connection.execute(
        UPSERT,
        event.aggregate_id,
        event.region,
        username,
        skeleton(username) if username else None,
        data.get("display_name"),
        "closed" if event.type == "player.closed" else "active",
        event.version,
    )
    return True


class PlayerViews:
    """One ordered consumer per region's player stream, on this node's database."""

    def __init__(self, pool: asyncpg.Pool, region: str, regions: list[str], config: EventsConfig):
        self._pool = pool
        self._region = region
        self._regions = regions
        self._config = config
        self._consumers: list[Consumer] = []
        self._clients: list = []

    async def start(self) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(INBOX_SCHEMA)
        for region in self._regions:
            url = self._config.peer_redis_urls.get(region, self._config.redis_url)
            client = aioredis.from_url(url, socket_timeout=5)
            self._clients.append(client)
            consumer = Consumer(
                client,
                [stream_name(region, "player")],
                f"player-views-{self._region}",
                f"{self._region}-views",
                self._handle,
                ConsumerConfig(visibility_timeout_ms=10_000, deliveries_max=1_000, block_ms=500),
                ordered=True,
            )
            self._consumers.append(consumer)
            consumer.start()

    async def _handle(self, event: Event) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await apply(connection, event)

    async def stop(self) -> None:
        for consumer in self._consumers:
            await consumer.stop()
        for client in self._clients:
            await client.aclose()

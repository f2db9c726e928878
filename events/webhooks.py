"""Webhooks: operators' endpoints, and the deliveries of the region's events to them
(docs/events.md, "Webhooks").

- **Enqueue**: a consumer group (``webhooks``) over the region's streams writes one delivery
  row per endpoint whose types match, keyed (endpoint, event): a redelivered entry enqueues
  nothing twice.
- **Dispatch**: the oldest ``window`` pending deliveries of each enabled endpoint are looked at
  in order; one goes out when it is due and no earlier pending delivery shares an account (or
  player) with it, so per endpoint each account's events arrive in order. A POST signed per
  Standard Webhooks (``webhook-id`` = the event id, ``webhook-timestamp``,
  ``webhook-signature`` by every current secret: two during a rotation); any 2xx delivers it,
  anything else (a redirect included: none is followed) schedules a retry by
  ``retry_schedule_s``, after which it is given up. An endpoint that has only failed for
  ``disable_after_s`` is disabled, and a ``webhook.endpoint_disabled`` event says so.
- **Replay**: an endpoint's deliveries from a stream cursor are made again.

Only ``https`` URLs are accepted, and (unless ``allow_private_addresses``) only hosts with
global addresses: a webhook cannot reach the region's own network. Both parts run on one node
of the region at a time (the one holding WEBHOOK_LOCK_KEY), so deliveries are enqueued in
stream order.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import os
import random
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import msgspec
from aiohttp.resolver import ThreadedResolver
from prometheus_client import Counter
from standardwebhooks import Webhook

from events.config import EventsConfig, WebhooksConfig
from events.consumer import Consumer, ConsumerConfig
from events.streams import FAMILIES, Event, from_fields, stream_name, to_json
from wire.ids import is_system_account_id
from wire.schemas import WebhookEndpointIn
from wire.times import rfc3339

log = logging.getLogger("regiongate.events.webhooks")

WEBHOOK_LOCK_KEY = 0x7765_6268_6F6F  # "webhoo"
GROUP = "webhooks"
STOP_TIMEOUT_S = 10.0
URL_LENGTH_MAX = 2048
EVENT_TYPES = (
    "transfer.posted", "transfer.pending", "transfer.posted_from_pending", "transfer.voided",
    "transfer.expired", "saga.completed", "saga.compensated", "account.created",
    "account.status_changed", "player.created", "player.username_changed", "player.closed",
    "webhook.endpoint_disabled",
)  # fmt: skip
"""What an endpoint may subscribe to: these, ``family.*`` or ``*``."""

DELIVERIES = Counter(
    "regiongate_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"]
)
ENDPOINTS_DISABLED = Counter(
    "regiongate_webhook_endpoints_disabled_total", "Endpoints disabled after only failures"
)

ENDPOINT_COLUMNS = (
    "id, url, event_types, status, failing_since, disabled_reason, version, created_at, updated_at"
)


class WebhookInputError(ValueError):
    """A bad endpoint definition: the field and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def private_address(host: str) -> bool:
    """Whether host is an IP address that is not globally routable (loopback, private,
    link-local, shared, reserved); False for a name."""
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return False


class PublicResolver(ThreadedResolver):
    """Name resolution for deliveries that keeps only global addresses: a name that resolves
    only to the region's own network is not delivered to (and a rebinding name gains nothing,
    since the check is made on the addresses connected to)."""

    async def resolve(self, host: str, port: int = 0, family=socket.AF_INET):
        found = await super().resolve(host, port, family)
        public = [entry for entry in found if not private_address(entry["host"])]
        if not public:
            raise OSError(f"{host} resolves only to non-global addresses: not delivered")
        return public


def check_url(url: Any, allow_private: bool = False) -> str:
    if not isinstance(url, str) or not 0 < len(url) <= URL_LENGTH_MAX:
        raise WebhookInputError("url", f"a URL of at most {URL_LENGTH_MAX} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookInputError("url", f"not a URL: {exc}") from None
    if parts.scheme != "https":
        raise WebhookInputError("url", "only https endpoints are accepted")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise WebhookInputError("url", "an https URL with a host, no credentials, no fragment")
    if port == 0 or any(c in url for c in " \r\n\t"):
        raise WebhookInputError("url", "not a usable URL")
    if not allow_private and private_address(parts.hostname):
        raise WebhookInputError("url", "a loopback, private or link-local address")
    return url


def check_types(types: Any) -> list[str]:
    if not isinstance(types, list) or not 1 <= len(types) <= 64:
        raise WebhookInputError("event_types", "a list of 1 to 64 event types")
    families = {t.split(".", 1)[0] for t in EVENT_TYPES}
    for item in types:
        if not isinstance(item, str) or not (
            item in EVENT_TYPES or item == "*" or (item.endswith(".*") and item[:-2] in families)
        ):
            raise WebhookInputError("event_types", f"unknown event type {item!r}")
    return sorted(set(types))


def matches(types: list[str], event_type: str) -> bool:
    return "*" in types or event_type in types or f"{event_type.split('.', 1)[0]}.*" in types


def order_keys(event: Event) -> list[str]:
    """What a delivery must stay in order with: the player accounts a transfer moves, the
    account a saga debits, the player, the endpoint. Not the system accounts (house, clearing,
    transit): every bet credits the house, so ordering by it would put a region's every
    delivery in one line; their events carry versions for a receiver that needs their order."""
    data = event.data
    if event.type.startswith("transfer."):
        keys = [data["debit_account_id"], data["credit_account_id"]]
    elif event.type.startswith("saga."):
        keys = [data["debit_account_id"]]
    else:
        keys = [event.aggregate_id]
    return [key for key in keys if not is_system_account_id(key)]


def endpoint_dict(row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "event_types": list(row["event_types"]),
        "status": row["status"],
        "failing_since": rfc3339(row["failing_since"]),
        "disabled_reason": row["disabled_reason"],
        "version": row["version"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }


async def create_endpoint(
    connection: asyncpg.Connection, body: WebhookEndpointIn, config: WebhooksConfig
) -> dict[str, Any]:
    """An endpoint from a body the contract's struct has validated (shape and bounds), after
    the checks a schema cannot make (the host's address, the types' names)."""
    url = check_url(body.url, config.allow_private_addresses)
    types = check_types(body.event_types)
    count = await connection.fetchval("SELECT count(*) FROM webhook_endpoints")
    if count >= config.endpoints_max:
        raise WebhookInputError("url", f"at most {config.endpoints_max} endpoints per region")
    secret = new_secret()
    row = await connection.fetchrow(
        f"INSERT INTO webhook_endpoints (id, url, event_types, secrets) VALUES ($1, $2, $3, $4)"
        f" RETURNING {ENDPOINT_COLUMNS}",
        "wh_" + os.urandom(12).hex(),
        url,
        types,
        [secret],
    )
    return {**endpoint_dict(row), "secret": secret}


async def rotate_secret(connection: asyncpg.Connection, endpoint_id: str) -> dict | None:
    """A new secret, signing beside the previous one until the next rotation."""
    secret = new_secret()
    row = await connection.fetchrow(
        f"UPDATE webhook_endpoints SET secrets = ARRAY[$2, secrets[1]], version = version + 1,"
        f" updated_at = now() WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
        secret,
    )
    return None if row is None else {**endpoint_dict(row), "secret": secret}


async def enable(connection: asyncpg.Connection, endpoint_id: str) -> dict | None:
    row = await connection.fetchrow(
        f"UPDATE webhook_endpoints SET status = 'enabled', failing_since = NULL,"
        f" disabled_reason = NULL, version = version + 1, updated_at = now() WHERE id = $1"
        f" RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
    )
    return None if row is None else endpoint_dict(row)


async def read_endpoints(connection: asyncpg.Connection, endpoint_id: str | None = None):
    if endpoint_id is None:
        rows = await connection.fetch(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"
        )
        return [endpoint_dict(row) for row in rows]
    row = await connection.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    return None if row is None else endpoint_dict(row)


async def enqueue(connection: asyncpg.Connection, endpoints: list, event: Event) -> int:
    """The event's deliveries to the endpoints whose types match; none twice."""
    chosen = [e["id"] for e in endpoints if matches(list(e["event_types"]), event.type)]
    if not chosen:
        return 0
    return await connection.fetchval(
        "WITH added AS (INSERT INTO webhook_deliveries"
        " (endpoint_id, event_id, event_type, order_keys, payload)"
        " SELECT unnest($1::text[]), $2, $3, $4, $5 ON CONFLICT DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM added",
        chosen,
        event.id,
        event.type,
        order_keys(event),
        to_json(event).decode(),
    )


async def replay(
    connection: asyncpg.Connection, redis, region: str, endpoint_id: str, cursor: str, limit: int
) -> dict[str, Any] | None:
    """The endpoint's deliveries of the events from cursor on (at most limit per stream), made
    again whether or not they were delivered. The next cursor to replay from, per stream."""
    endpoint = await read_endpoints(connection, endpoint_id)
    if endpoint is None:
        return None
    replayed, next_cursors = 0, {}
    for family in FAMILIES:
        stream = stream_name(region, family)
        entries = await redis.xrange(stream, cursor, "+", count=limit)
        for _, fields in entries:
            event = from_fields(fields)
            if not matches(endpoint["event_types"], event.type):
                continue
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2",
                    endpoint_id,
                    event.id,
                )
                replayed += await enqueue(connection, [endpoint], event)
        if len(entries) == limit:
            next_cursors[stream] = _next(entries[-1][0])
    return {"endpoint_id": endpoint_id, "replayed": replayed, "next_cursors": next_cursors}


def _next(entry_id) -> str:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return f"{ms}-{int(seq) + 1}"


def signature_headers(event_id: str, payload: bytes, secrets: list[str]) -> dict[str, str]:
    now = datetime.now(UTC)
    signatures = " ".join(Webhook(secret).sign(event_id, now, payload) for secret in secrets)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "regiongate-webhooks/1",
    }


PENDING = """
SELECT e.id AS endpoint_id, e.url, e.secrets, d.seq, d.event_id, d.order_keys, d.payload,
       d.attempts, d.next_attempt_at <= now() AS due
FROM webhook_endpoints e
CROSS JOIN LATERAL (
    SELECT * FROM webhook_deliveries d
    WHERE d.endpoint_id = e.id AND d.status = 'pending' ORDER BY d.seq LIMIT $1
) d
WHERE e.status = 'enabled'
ORDER BY e.id, d.seq
"""


def sendable(rows, in_flight: set[int]) -> list:
    """Of each endpoint's oldest pending deliveries (in order), those due and not behind an
    earlier pending one that shares an order key."""
    chosen, blocked = [], {}
    for row in rows:
        keys = blocked.setdefault(row["endpoint_id"], set())
        mine = set(row["order_keys"])
        if row["due"] and row["seq"] not in in_flight and not mine & keys:
            chosen.append(row)
        keys |= mine
    return chosen


class Webhooks:
    """The region's webhook enqueuer and dispatcher, while this node holds WEBHOOK_LOCK_KEY."""

    def __init__(self, dsn: str, password: str | None, region: str, config: EventsConfig):
        import redis.asyncio as aioredis

        self._dsn = dsn
        self._password = password
        self._region = region
        self._config = config.webhooks
        self._redis = aioredis.from_url(config.redis_url, socket_timeout=5)
        self._task: asyncio.Task | None = None
        self._in_flight: set[int] = set()
        self._endpoints: list = []
        self._endpoints_read = 0.0
        self._cleaned = 0.0
        self._stopping = False
        self._reading: asyncio.Task | None = None
        self._ssl = ssl.create_default_context()
        if self._config.ca_file:
            self._ssl.load_verify_locations(self._config.ca_file)
        self.holding = False

    @property
    def redis(self):
        return self._redis

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        self._stopping = True
        tasks = {task for task in (self._task, self._reading) if task is not None}
        for task in tasks:  # the reader too: it must not outlive the holding that made it
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        await self._redis.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._hold_and_run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL or Redis away: wait and go on
                log.warning("webhooks: %s: %s; retrying", type(exc).__name__, exc)
            self.holding = False
            await asyncio.sleep(random.uniform(0.2, 1.0))

    async def _hold_and_run(self) -> None:
        lock = await asyncpg.connect(self._dsn, password=self._password)
        pool = None
        try:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", WEBHOOK_LOCK_KEY):
                await asyncio.sleep(1.0)
                return
            self.holding = True
            pool = await asyncpg.create_pool(
                self._dsn, password=self._password, min_size=1, max_size=4
            )
            consumer = Consumer(
                self._redis,
                [stream_name(self._region, family) for family in FAMILIES],
                GROUP,
                # One member, one name across restarts (the lock makes it the only one): it
                # resumes its own pending entries first, so deliveries are enqueued in order.
                f"{self._region}-webhooks",
                lambda event: self._enqueue(pool, event),
                ConsumerConfig(
                    visibility_timeout_ms=5_000,
                    deliveries_max=1_000,
                    block_ms=self._config.poll_interval_ms,
                ),
                ordered=True,
            )
            await consumer.ensure_groups()
            timeout = aiohttp.ClientTimeout(total=self._config.timeout_ms / 1000)
            connector = aiohttp.TCPConnector(
                ssl=self._ssl,
                limit=self._config.concurrency,
                resolver=None if self._config.allow_private_addresses else PublicResolver(),
            )
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                # Enqueueing and delivering run side by side: a delivery never waits for the
                # streams' next read, nor a read for a slow endpoint.
                reading = self._reading = asyncio.create_task(self._read(consumer))
                try:
                    while True:
                        if not await self._dispatch(pool, session):
                            await asyncio.sleep(self._config.poll_interval_ms / 1000)
                        await self._clean(pool)
                        if reading.done():
                            reading.result()  # its error ends this holding; _run retries
                finally:
                    # A read cancelled mid-command may linger in the Redis client: wait a
                    # bounded time, never for ever.
                    reading.cancel()
                    await asyncio.wait({reading}, timeout=2.0)
        finally:
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 5.0)
                except TimeoutError:
                    pool.terminate()  # a connection a cancelled delivery left: no wait
                except asyncio.CancelledError:
                    pool.terminate()
                    raise  # a stop: never swallowed, or the loop below would go on
            lock.terminate()

    async def _clean(self, pool: asyncpg.Pool) -> None:
        """Once a minute, delete at most 10,000 settled deliveries older than their retention."""
        now = time.monotonic()
        if now - self._cleaned < 60:
            return
        self._cleaned = now
        async with pool.acquire() as connection:
            await connection.execute(
                "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries"
                " WHERE status <> 'pending' AND created_at < now() - make_interval(secs => $1)"
                " ORDER BY seq LIMIT 10000)",
                float(self._config.deliveries_retain_s),
            )

    @staticmethod
    async def _read(consumer: Consumer) -> None:
        while True:
            await consumer.run_once()

    async def _enqueue(self, pool: asyncpg.Pool, event: Event) -> None:
        async with pool.acquire() as connection:
            if time.monotonic() - self._endpoints_read > 1.0:
                self._endpoints = await connection.fetch(
                    "SELECT id, event_types FROM webhook_endpoints"
                )
                self._endpoints_read = time.monotonic()
            await enqueue(connection, self._endpoints, event)

    async def _dispatch(self, pool: asyncpg.Pool, session: aiohttp.ClientSession) -> int:
        """Send what may go now (up to concurrency at once); the deliveries it made."""
        async with pool.acquire() as connection:
            rows = await connection.fetch(PENDING, self._config.window)
        batch = sendable(rows, self._in_flight)[: self._config.concurrency]
        if not batch:
            return 0
        for row in batch:
            self._in_flight.add(row["seq"])
        await asyncio.gather(*(self._deliver(pool, session, row) for row in batch))
        return len(batch)

    async def _deliver(self, pool: asyncpg.Pool, session: aiohttp.ClientSession, row) -> None:
        payload = row["payload"].encode()
        status, error = None, None
        host = urlsplit(row["url"]).hostname or ""
        try:
            if not self._config.allow_private_addresses and private_address(host):
                raise OSError(f"{host} is not a global address: not delivered")
            async with session.post(
                row["url"],
                data=payload,
                headers=signature_headers(row["event_id"], payload, list(row["secrets"])),
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.content.read(4096)
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (
                    " (redirects are not followed)" if 300 <= status < 400 else ""
                )
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            self._in_flight.discard(row["seq"])
        async with pool.acquire() as connection, connection.transaction():
            if error is None:
                await self._delivered(connection, row, status)
            else:
                await self._failed(connection, row, status, error)

    async def _delivered(self, connection, row, status: int) -> None:
        DELIVERIES.labels("delivered").inc()
        await connection.execute(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,"
            " last_status = $2, last_error = NULL, delivered_at = now() WHERE seq = $1",
            row["seq"],
            status,
        )
        await connection.execute(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1"
            " AND failing_since IS NOT NULL",
            row["endpoint_id"],
        )

    async def _failed(self, connection, row, status: int | None, error: str) -> None:
        schedule = self._config.retry_schedule_s
        attempts = row["attempts"] + 1
        given_up = attempts > len(schedule)
        DELIVERIES.labels("given_up" if given_up else "failed").inc()
        wait = 0 if given_up else schedule[attempts - 1] * random.uniform(1.0, 1.2)
        await connection.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, last_status = $4,"
            " last_error = $5, next_attempt_at = now() + make_interval(secs => $6)"
            " WHERE seq = $1",
            row["seq"],
            "failed" if given_up else "pending",
            attempts,
            status,
            error,
            float(wait),
        )
        endpoint = await connection.fetchrow(
            "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())"
            " WHERE id = $1 RETURNING id, url, failing_since, status,"
            " now() - failing_since >= make_interval(secs => $2) AS past",
            row["endpoint_id"],
            float(self._config.disable_after_s),
        )
        if endpoint["status"] == "enabled" and endpoint["past"]:
            await disable(connection, endpoint, f"every delivery failed since; last: {error}")


async def disable(connection: asyncpg.Connection, endpoint, reason: str) -> None:
    """Disable an endpoint and say so with an event, in the caller's transaction."""
    row = await connection.fetchrow(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2,"
        " version = version + 1, updated_at = now() WHERE id = $1 AND status = 'enabled'"
        " RETURNING version",
        endpoint["id"],
        reason,
    )
    if row is None:
        return
    ENDPOINTS_DISABLED.inc()
    body = {
        "endpoint_id": endpoint["id"],
        "url": endpoint["url"],
        "failing_since": rfc3339(endpoint["failing_since"]),
        "reason": reason,
    }
    await connection.execute(
        "INSERT INTO outbox (family, type, ref, aggregate_id, version, body)"
        " VALUES ('webhook', 'webhook.endpoint_disabled', $1, $1, $2, $3::jsonb)",
        endpoint["id"],
        row["version"],
        msgspec.json.encode(body).decode(),
    )
    log.error("webhooks: endpoint %s disabled: %s", endpoint["id"], reason)

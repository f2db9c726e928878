"""The region's relay: publishes committed outbox rows to Redis Streams in an order that never
skips a transaction that commits after a later-numbered one (decision 0013).

It works in batches between two snapshots, as PgQ does. A batch is every row whose transaction
is visible in ``cur`` (a snapshot taken when the batch starts) and was not in ``prev`` (the
last batch's): exactly the transactions that committed in between, whatever their ids or row
numbers. Within a batch rows go out by ``seq``; two transactions that touch one aggregate are
serialised by its row lock, so the later one's rows have larger seqs and commit no earlier:
per aggregate, streams hold events in version order. A batch is read in pages of
``page_rows`` from a checkpoint kept in ``outbox_relay`` after each page, so memory does not
grow with a backlog and a ``kill -9`` resumes at the page it was in (that page may go out
twice; consumers dedupe by event id).

One relay per region: the one that holds the session advisory lock on RELAY_LOCK_KEY. Its
session ends with its process, so another node takes over. Cleanup deletes published rows
older than ``retain_s``, at most ``cleanup_rows_max`` at a time; trimming keeps every stream
entry a consumer group has not yet read, and past ``stream_len_max`` the relay stops
publishing rather than trim one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram

from events.config import EventsConfig
from events.streams import FAMILIES, Event, stream_name, to_fields
from wire.times import rfc3339

log = logging.getLogger("regiongate.events.relay")

RELAY_LOCK_KEY = 0x6576_656E_7473  # "events"
RELAY_NAME = "relay"

PUBLISHED = Counter(
    "regiongate_events_published_total", "Events the relay published, by family", ["family"]
)
PUBLISH_LAG = Histogram(
    "regiongate_events_publish_lag_seconds",
    "From an event's commit (its batch's time) to its publication",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
RELAY_BLOCKED = Gauge(
    "regiongate_events_relay_blocked",
    "1 while the relay holds back because a stream reached stream_len_max",
)
RELAY_ERRORS = Counter("regiongate_events_relay_errors_total", "Relay rounds that failed")
CLEANED = Counter("regiongate_events_outbox_cleaned_total", "Published outbox rows deleted")

# The tables the relay reads, each with the columns of an event and what its data comes from.
SOURCES: dict[str, str] = {
    "outbox": (
        "SELECT seq, family, type, ref, aggregate_id, version, body, created_at, NULL AS id"
        " FROM outbox"
    ),
    "identity": (
        "SELECT seq, 'player' AS family, type, aggregate_id AS ref, aggregate_id, version, body,"
        " created_at, id FROM identity.events"
    ),
}
AGGREGATE_TYPES = {
    "transfer": "account",
    "saga": "saga",
    "account": "account",
    "player": "player",
    "webhook": "webhook_endpoint",
}
# A batch: the rows of the transactions that committed between the two snapshots (prev's
# in-progress ones, and those that began after it), found by the xid index. $1 cur, $2 prev.
_IN_BATCH = (
    "pg_visible_in_snapshot(xid, $1::text::pg_snapshot) AND ($2::text::pg_snapshot IS NULL"
    " OR xid = ANY (ARRAY(SELECT pg_snapshot_xip($2::text::pg_snapshot)))"
    " OR (xid >= pg_snapshot_xmax($2::text::pg_snapshot)"
    " AND xid < pg_snapshot_xmax($1::text::pg_snapshot)))"
)
TRANSFER_STATUS = {
    "transfer.posted": "posted",
    "transfer.pending": "pending",
    "transfer.posted_from_pending": "posted",
    "transfer.voided": "voided",
    "transfer.expired": "expired",
}


def _json(value) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    return msgspec.json.decode(value)


def transfer_data(row, event_type: str) -> dict[str, Any]:
    """A transfer event's data: the row's immutable part, its status as of the event."""
    return {
        "transfer_id": row["id"],
        "kind": row["kind"],
        "flow": row["flow"],
        "status": TRANSFER_STATUS[event_type],
        "pending_id": row["pending_id"],
        "debit_account_id": row["debit_account_id"],
        "credit_account_id": row["credit_account_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "timeout_at": rfc3339(row["timeout_at"]),
        "reference": row["reference"],
        "round_id": row["round_id"],
        "metadata": _json(row["metadata"]),
        "created_at": rfc3339(row["created_at"]),
        "debit_balance_after": {
            "posted": row["debit_posted_after"],
            "debits_pending": row["debit_debits_pending_after"],
            "credits_pending": row["debit_credits_pending_after"],
            "version": row["debit_version_after"],
        },
        "credit_balance_after": {
            "posted": row["credit_posted_after"],
            "debits_pending": row["credit_debits_pending_after"],
            "credits_pending": row["credit_credits_pending_after"],
            "version": row["credit_version_after"],
        },
    }


def saga_data(row) -> dict[str, Any]:
    """A finished cross-region transfer: how it ended and the transfers it made."""
    return {
        "saga_id": row["id"],
        "status": row["status"],
        "debit_account_id": row["debit_account_id"],
        "credit_account_id": row["credit_account_id"],
        "credit_region": row["credit_region"],
        "amount": row["amount"],
        "currency": row["currency"],
        "reference": row["reference"],
        "metadata": _json(row["metadata"]),
        "reason": row["reason"],
        "hold_transfer_id": row["hold_transfer_id"],
        "credit_transfer_id": row["credit_transfer_id"],
        "finish_transfer_id": row["finish_transfer_id"],
        "created_at": rfc3339(row["created_at"]),
        "finished_at": rfc3339(row["finished_at"]),
    }


async def build_events(connection: asyncpg.Connection, region: str, rows) -> list[Event]:
    """The events of outbox or identity rows, their data read from the rows they name."""
    refs: dict[str, list[str]] = {"transfer": [], "saga": []}
    for row in rows:
        if row["body"] is None and row["family"] in refs:
            refs[row["family"]].append(row["ref"])
    transfers = sagas = {}
    if refs["transfer"]:
        transfers = {
            r["id"]: r
            for r in await connection.fetch(
                "SELECT * FROM transfers WHERE id = ANY ($1::text[])", refs["transfer"]
            )
        }
    if refs["saga"]:
        sagas = {
            r["id"]: r
            for r in await connection.fetch(
                "SELECT * FROM sagas WHERE id = ANY ($1::text[])", refs["saga"]
            )
        }
    events = []
    for row in rows:
        family = row["family"]
        if row["body"] is not None:
            data = _json(row["body"])
        elif family == "transfer":
            data = transfer_data(transfers[row["ref"]], row["type"])
        else:
            data = saga_data(sagas[row["ref"]])
        events.append(
            Event(
                id=row["id"] or f"ev_{region}_{row['seq']}",
                type=row["type"],
                region=region,
                aggregate_type=AGGREGATE_TYPES[family],
                aggregate_id=row["aggregate_id"],
                version=row["version"],
                time=rfc3339(row["created_at"]),
                data=data,
            )
        )
    return events


@dataclass
class RelayState:
    """outbox_relay's row: the batch the relay is in and, per source, the seq it has published
    up to and the batch's last seq."""

    prev: str | None = None
    cur: str | None = None
    after: dict[str, list[int]] = field(default_factory=dict)


class Relay:
    """Runs the region's relay while this process holds the relay lock; see the module doc."""

    def __init__(self, dsn: str, password: str | None, region: str, config: EventsConfig):
        if config.redis_url is None:
            raise ValueError("the relay needs events.redis_url")
        self._dsn = dsn
        self._password = password
        self._region = region
        self._config = config
        self._redis = aioredis.from_url(config.redis_url, socket_timeout=5)
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._last_trim = 0.0
        self._last_cleanup = 0.0
        self._marks: collections.deque[tuple[float, str]] = collections.deque()
        self.blocked = False
        self.holding = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-relay")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=10.0)
        await self._redis.aclose()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._hold_and_relay()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the relay outlives any outage of PostgreSQL or Redis
                RELAY_ERRORS.inc()
                failures += 1
                log.warning("relay: %s: %s; retrying", type(exc).__name__, exc)
            self.holding = False
            cap = min(self._config.retry_max_ms, 50 * 2 ** min(failures, 10)) / 1000
            await self._sleep(random.uniform(0, cap) if failures else 0.5)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _hold_and_relay(self) -> None:
        connection = await asyncpg.connect(self._dsn, password=self._password)
        try:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return  # another node's relay runs this region
            self.holding = True
            log.info("relay: publishing region %s", self._region)
            # The lock's holder is the row's only writer: read it once, then keep it here
            # (each page saves it; a new holder reads it again).
            state = await load_state(connection)
            while not self._stopping.is_set():
                published = await relay_once(connection, self._redis, self._region, self, state)
                if not published:
                    await self._sleep(self._config.poll_interval_ms / 1000)
        finally:
            connection.terminate()  # the session's end releases the relay lock

    @property
    def config(self) -> EventsConfig:
        return self._config

    async def housekeeping(self, connection: asyncpg.Connection, prev: str | None) -> None:
        """Trim the streams and clean the outbox, each on its own schedule. Cleanup deletes
        below the xmin of a published batch's snapshot (prev) noted at least retain_s ago:
        every such transaction's events are out, and older than that."""
        now = time.monotonic()
        if now - self._last_trim >= self._config.trim_interval_s:
            self._last_trim = now
            self.blocked = await trim_streams(self._redis, self._region, self._config)
            RELAY_BLOCKED.set(1 if self.blocked else 0)
        if prev is None or now - self._last_cleanup < self._config.cleanup_interval_s:
            return
        self._last_cleanup = now
        xmin = await connection.fetchval(
            "SELECT pg_snapshot_xmin($1::text::pg_snapshot)::text", prev
        )
        self._marks.append((now, xmin))
        horizon = None
        while self._marks and now - self._marks[0][0] >= self._config.retain_s:
            horizon = self._marks.popleft()[1]
        if horizon is not None:
            self._marks.appendleft((now - self._config.retain_s, horizon))
            await clean_outbox(connection, horizon, self._config)


async def load_state(connection: asyncpg.Connection) -> RelayState:
    await connection.execute(
        "INSERT INTO outbox_relay (name) VALUES ($1) ON CONFLICT DO NOTHING", RELAY_NAME
    )
    row = await connection.fetchrow(
        "SELECT prev::text, cur::text, after FROM outbox_relay WHERE name = $1", RELAY_NAME
    )
    return RelayState(row["prev"], row["cur"], msgspec.json.decode(row["after"]))


async def _save(connection, state: RelayState, published: int) -> None:
    await connection.execute(
        "UPDATE outbox_relay SET prev = $2::text::pg_snapshot, cur = $3::text::pg_snapshot,"
        " after = $4, published = published + $5, updated_at = now() WHERE name = $1",
        RELAY_NAME,
        state.prev,
        state.cur,
        msgspec.json.encode(state.after).decode(),
        published,
    )


async def relay_once(
    connection: asyncpg.Connection, redis, region: str, relay, state: RelayState | None = None
) -> int:
    """One page: open a batch if none is, publish up to page_rows of it per source, save the
    checkpoint, close the batch once every source is through. The events it published.
    relay gives the config and the housekeeping (a Relay, or a test's stand-in)."""
    config: EventsConfig = relay.config
    if state is None:
        state = await load_state(connection)
    if state.cur is None:
        state.cur = await connection.fetchval("SELECT pg_current_snapshot()::text")
        # Each source's batch spans a range of seqs, found once by the xid index; its pages
        # then walk that range by the primary key, so a backlog is read once, not once a page.
        for source, select in SOURCES.items():
            low, high = await connection.fetchrow(
                f"SELECT min(seq), max(seq) FROM ({select} WHERE {_IN_BATCH}) AS s",
                state.cur,
                state.prev,
            )
            state.after[source] = [low - 1, high] if low is not None else [0, 0]
        await _save(connection, state, 0)
    await relay.housekeeping(connection, state.prev)
    if relay.blocked:
        return 0
    published = 0
    done = True
    for source, select in SOURCES.items():
        after, high = state.after.get(source, [0, 0])
        if after >= high:
            continue
        rows = await connection.fetch(
            f"{select} WHERE seq > $3 AND seq <= $4 AND {_IN_BATCH} ORDER BY seq LIMIT $5",
            state.cur,
            state.prev,
            after,
            high,
            config.page_rows,
        )
        if len(rows) == config.page_rows and rows[-1]["seq"] < high:
            done = False
        state.after[source] = [rows[-1]["seq"] if rows else high, high]
        if not rows:
            continue
        events = await build_events(connection, region, rows)
        await publish(redis, region, events)
        published += len(events)
        now = datetime.now(UTC)
        for row in rows:
            PUBLISH_LAG.observe(max(0.0, (now - row["created_at"]).total_seconds()))
    if done:
        state.prev, state.cur, state.after = state.cur, None, {}
    await _save(connection, state, published)
    return published


async def publish(redis, region: str, events: list[Event]) -> None:
    """XADD each event to its family's stream, in order, in one round trip."""
    if not events:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(stream_name(region, family_of(event.type)), to_fields(event))
        await pipe.execute()
    for event in events:
        PUBLISHED.labels(family_of(event.type)).inc()


def family_of(event_type: str) -> str:
    return event_type.split(".", 1)[0]


async def clean_outbox(connection: asyncpg.Connection, horizon: str, config: EventsConfig) -> int:
    """Delete at most cleanup_rows_max published rows of transactions below horizon (an xid),
    by the xid index; record the newest created_at deleted, for the audit."""
    deleted = await connection.fetchval(
        """
        WITH gone AS (
            DELETE FROM outbox WHERE seq IN (
                SELECT seq FROM outbox WHERE xid < $1::xid8 ORDER BY xid LIMIT $2)
            RETURNING created_at
        ), mark AS (
            UPDATE outbox_relay SET cleaned_through = greatest(
                cleaned_through, (SELECT max(created_at) FROM gone))
            WHERE name = $3 AND EXISTS (SELECT 1 FROM gone)
        )
        SELECT count(*) FROM gone
        """,
        horizon,
        config.cleanup_rows_max,
        RELAY_NAME,
    )
    CLEANED.inc(deleted)
    return deleted


async def trim_streams(redis, region: str, config: EventsConfig) -> bool:
    """Trim each stream to what some group has yet to read (its oldest pending entry, or past
    its last delivered one), keeping stream_keep_min entries. True when a stream is still
    longer than stream_len_max (the relay then holds back)."""
    blocked = False
    for family in FAMILIES:
        stream = stream_name(region, family)
        length = await redis.xlen(stream)
        if length <= config.stream_keep_min:
            continue
        keep = await redis.xrevrange(stream, "+", "-", count=max(config.stream_keep_min, 1))
        safe = keep[-1][0] if config.stream_keep_min else _after(keep[0][0])
        for group in await redis.xinfo_groups(stream):
            pending = await redis.xpending(stream, group["name"])
            oldest = pending["min"] if pending["pending"] else None
            unread = _after(group["last-delivered-id"])
            for candidate in (oldest, unread):
                if candidate is not None and _id(candidate) < _id(safe):
                    safe = candidate
        await redis.xtrim(stream, minid=safe, approximate=False)
        if await redis.xlen(stream) > config.stream_len_max:
            blocked = True
            log.warning("relay: %s is past stream_len_max: a consumer group is behind", stream)
    return blocked


def _id(entry_id) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id) -> str:
    ms, seq = _id(entry_id)
    return f"{ms}-{seq + 1}"

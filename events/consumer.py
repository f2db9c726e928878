"""A consumer of the event streams on a Redis consumer group (docs/events.md): it reads new
entries, takes over entries another consumer left unacknowledged past the visibility timeout,
moves an entry delivered ``deliveries_max`` times to the stream's dead-letter stream, and
acknowledges an entry only once its handler returned. Delivery is at least once; a handler
that changes a database makes it exactly once with ``inbox_first`` in its own transaction.

Within a stream a consumer handles entries in stream order. By default an entry whose handler
failed is retried after the visibility timeout, after later ones. An ``ordered`` consumer (one
member per group, under a name that survives its restarts) never passes a failed entry: each
round it first takes over what other members left, then handles its own pending entries from
the oldest, and reads new ones only when none is left, stopping at the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

import asyncpg
from msgspec import Meta, Struct
from prometheus_client import Counter, Gauge
from redis.exceptions import ResponseError

from events.streams import Event, dead_letter_stream, from_fields

log = logging.getLogger("regiongate.events.consumer")

CONSUMED = Counter(
    "regiongate_events_consumed_total", "Entries a consumer group handled", ["group", "outcome"]
)
REDELIVERED = Counter(
    "regiongate_events_redelivered_total",
    "Entries taken over after the visibility timeout",
    ["group"],
)
DEAD_LETTERED = Counter(
    "regiongate_events_dead_lettered_total", "Entries moved to a dead-letter stream", ["group"]
)
LAG = Gauge(
    "regiongate_events_consumer_lag",
    "Entries in a stream a group has not read",
    ["group", "stream"],
)

LAG_INTERVAL_S = 10.0
"""How often a running consumer sets its lag gauge (XINFO GROUPS per stream)."""

INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_inbox (
    consumer   text NOT NULL,
    event_id   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
)
"""


async def inbox_first(connection: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """In the handler's transaction: True the first time this consumer applies this event, False
    for every redelivery (the handler then changes nothing). The event_inbox table comes from
    INBOX_SCHEMA, created once in the consumer's database."""
    return bool(
        await connection.fetchval(
            "INSERT INTO event_inbox (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            consumer,
            event_id,
        )
    )


async def inbox_prune(
    connection: asyncpg.Connection, consumer: str, older_than_s: float, limit: int = 10_000
) -> int:
    """Forget at most limit events this consumer applied more than older_than_s ago. Keep them
    longer than any redelivery can come (the streams' retention): a forgotten event delivered
    again would be applied again."""
    return await connection.fetchval(
        "WITH gone AS (DELETE FROM event_inbox WHERE (consumer, event_id) IN ("
        " SELECT consumer, event_id FROM event_inbox WHERE consumer = $1"
        " AND applied_at < now() - make_interval(secs => $2) LIMIT $3) RETURNING 1)"
        " SELECT count(*) FROM gone",
        consumer,
        float(older_than_s),
        limit,
    )


class ConsumerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    visibility_timeout_ms: Annotated[int, Meta(ge=10, le=86_400_000)] = 30_000
    """An entry unacknowledged this long is taken over by another consumer of the group."""
    deliveries_max: Annotated[int, Meta(ge=1, le=1_000)] = 10
    """Deliveries before an entry goes to the dead-letter stream."""
    count: Annotated[int, Meta(ge=1, le=10_000)] = 200
    """Entries read at once: what bounds a consumer's memory."""
    block_ms: Annotated[int, Meta(ge=1, le=60_000)] = 500


Handler = Callable[[Event], Awaitable[None]]


class Consumer:
    """One member (name) of a consumer group over some streams."""

    def __init__(
        self,
        redis,
        streams: Sequence[str],
        group: str,
        name: str,
        handler: Handler,
        config: ConsumerConfig | None = None,
        start_id: str = "0",
        ordered: bool = False,
    ) -> None:
        self._redis = redis
        self._streams = list(streams)
        self._group = group
        self._name = name
        self._handler = handler
        self._config = config or ConsumerConfig()
        self._start_id = start_id
        self._ordered = ordered
        self._backoff_s = 0.0
        self._task: asyncio.Task | None = None

    async def ensure_groups(self) -> None:
        """Create the group on each stream (and the stream) if missing; start_id "0" reads every
        entry the stream still holds, "$" only new ones."""
        for stream in self._streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self._redis.xgroup_create(stream, self._group, self._start_id, mkstream=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self._group}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=10.0)

    async def run(self) -> None:
        await self.ensure_groups()
        measured = 0.0
        while True:
            try:
                await self.run_once()
                if time.monotonic() - measured >= LAG_INTERVAL_S:
                    measured = time.monotonic()
                    await self.measure_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: wait and go on
                log.warning("consumer %s: %s: %s", self._group, type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self.ensure_groups()

    async def run_once(self) -> int:
        """Take over stuck entries, then read new ones; handle each. The entries handled."""
        if self._ordered:
            handled, failed = await self._run_ordered()
            # A failed entry is retried first, after a wait that doubles up to the visibility
            # timeout: an outage of what the handler writes to costs few deliveries.
            if failed:
                cap = self._config.visibility_timeout_ms / 1000
                self._backoff_s = min(cap, max(0.05, self._backoff_s * 2))
                await asyncio.sleep(self._backoff_s)
            else:
                self._backoff_s = 0.0
                if not handled and len(self._streams) > 1:
                    # Reads of several streams one at a time do not block: an idle round
                    # waits here instead of asking Redis again at once.
                    await asyncio.sleep(self._config.block_ms / 1000)
            return handled
        handled = await self._reclaim()
        replies = await self._redis.xreadgroup(
            self._group,
            self._name,
            {stream: ">" for stream in self._streams},
            count=self._config.count,
            block=self._config.block_ms,
        )
        for stream, entries in replies or []:
            handled += await self._handle(_text(stream), entries)
        return handled

    async def _run_ordered(self) -> tuple[int, bool]:
        handled, failed = 0, False
        for stream in self._streams:
            # What a member that is gone left behind comes first, then our own pending entries,
            # oldest first: only when none is left (or one failed) does the stream move on.
            if await self._take_over(stream):
                failed = True  # another member's entries are not ours to take yet: wait
                continue
            mine = await self._redis.xreadgroup(
                self._group, self._name, {stream: "0"}, count=self._config.count
            )
            entries = mine[0][1] if mine else []
            if entries:
                done = await self._handle(stream, entries, stop_at_failure=True)
                handled += done
                failed |= done < len(entries)
                continue
            fresh = await self._redis.xreadgroup(
                self._group,
                self._name,
                {stream: ">"},
                count=self._config.count,
                block=self._config.block_ms if len(self._streams) == 1 else None,
            )
            for _, entries in fresh or []:
                done = await self._handle(stream, entries, stop_at_failure=True)
                handled += done
                failed |= done < len(entries)
        return handled, failed

    async def _take_over(self, stream: str) -> bool:
        """Claim the entries other members hold (idle past the visibility timeout), and
        dead-letter those delivered deliveries_max times, ours included. True while another
        member holds entries not yet idle that long (they come before anything newer)."""
        stuck = await self._redis.xpending_range(
            stream, self._group, min="-", max="+", count=self._config.count
        )
        idle = self._config.visibility_timeout_ms
        dead = self._dead(stuck)
        if dead:
            await self._dead_letter(stream, dead)
        others = [
            e for e in stuck if _text(e["consumer"]) != self._name and e["message_id"] not in dead
        ]
        ready = [e["message_id"] for e in others if e["time_since_delivered"] >= idle]
        if ready:
            await self._redis.xclaim(stream, self._group, self._name, idle, ready, justid=True)
            REDELIVERED.labels(self._group).inc(len(ready))
        return len(ready) < len(others)

    def _dead(self, pending: list[dict]) -> list:
        """The pending entries delivered deliveries_max times: for the dead-letter stream."""
        limit = self._config.deliveries_max
        return [e["message_id"] for e in pending if e["times_delivered"] >= limit]

    async def _reclaim(self) -> int:
        handled = 0
        idle = self._config.visibility_timeout_ms
        for stream in self._streams:
            stuck = await self._redis.xpending_range(
                stream, self._group, min="-", max="+", count=self._config.count, idle=idle
            )
            if not stuck:
                continue
            dead = self._dead(stuck)
            retry = [e["message_id"] for e in stuck if e["message_id"] not in dead]
            if dead:
                await self._dead_letter(stream, dead)
            if retry:
                entries = await self._redis.xclaim(stream, self._group, self._name, idle, retry)
                REDELIVERED.labels(self._group).inc(len(entries))
                handled += await self._handle(stream, entries)
        return handled

    async def _dead_letter(self, stream: str, ids: list) -> None:
        entries = await self._redis.xclaim(
            stream, self._group, self._name, self._config.visibility_timeout_ms, ids
        )
        for entry_id, fields in entries:
            if fields:
                await self._redis.xadd(
                    dead_letter_stream(stream),
                    {**fields, "dead_group": self._group, "dead_entry": entry_id},
                )
        await self._redis.xack(stream, self._group, *ids)
        DEAD_LETTERED.labels(self._group).inc(len(ids))
        log.error("consumer %s: %d entries of %s dead-lettered", self._group, len(ids), stream)

    async def _handle(self, stream: str, entries, stop_at_failure: bool = False) -> int:
        done = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending: nothing left to handle
                done.append(entry_id)
                continue
            try:
                await self._handler(from_fields(fields))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                CONSUMED.labels(self._group, "failed").inc()
                log.warning(
                    "consumer %s: entry %s of %s failed (%s: %s); redelivered after %d ms",
                    self._group, _text(entry_id), stream, type(exc).__name__, exc,
                    self._config.visibility_timeout_ms,
                )  # fmt: skip
                if stop_at_failure:
                    break
                continue
            CONSUMED.labels(self._group, "handled").inc()
            done.append(entry_id)
        if done:
            await self._redis.xack(stream, self._group, *done)
        return len(done)

    async def measure_lag(self) -> dict[str, int]:
        """Entries each stream holds that the group has not read (Redis 7's XINFO GROUPS lag)."""
        lags = {}
        for stream in self._streams:
            for group in await self._redis.xinfo_groups(stream):
                if _text(group["name"]) == self._group:
                    lag = group.get("lag") or 0
                    lags[stream] = lag
                    LAG.labels(self._group, stream).set(lag)
        return lags


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

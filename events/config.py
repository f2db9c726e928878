"""The ``events:`` section of a region node's config: the outbox switch and the relay's bounds.
Every bound is explicit (runtime.config)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct


class EventsConfig(Struct, frozen=True, forbid_unknown_fields=True):
    outbox: bool = True
    """Write an outbox row with every change others care about. Off only to measure what the
    outbox costs (loadtests.bench_ledger): with it off nothing is published."""
    redis_url: str | None = None
    """Where the relay publishes; none: this node runs no relay (the rows wait for one)."""
    relay: bool = True
    """Run the region's relay in this node (one node of a region holds it at a time)."""
    page_rows: Annotated[int, Meta(ge=1, le=10_000)] = 1_000
    """Events read, published and checkpointed at once: what bounds the relay's memory."""
    poll_interval_ms: Annotated[int, Meta(ge=1, le=60_000)] = 20
    """How long the relay sleeps when it found nothing to publish."""
    retry_max_ms: Annotated[int, Meta(ge=10, le=60_000)] = 2_000
    """The longest wait between attempts while PostgreSQL or Redis is unreachable."""
    retain_s: Annotated[int, Meta(ge=0, le=30 * 86_400)] = 600
    """How long a published outbox row is kept (for the audit's check) before cleanup deletes it."""
    cleanup_interval_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 10.0
    cleanup_rows_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """Rows one cleanup deletes at most: a long backlog is cleaned over many rounds."""
    stream_keep_min: Annotated[int, Meta(ge=0, le=100_000_000)] = 100_000
    """Entries each stream keeps for tail and replay, whether or not every group has read them."""
    stream_len_max: Annotated[int, Meta(ge=1_000, le=1_000_000_000)] = 10_000_000
    """Past this length (a consumer group that stopped reading), the relay stops publishing
    rather than trim what a group has not read: the events wait in the outbox."""
    trim_interval_s: Annotated[float, Meta(ge=0.1, le=86_400)] = 5.0

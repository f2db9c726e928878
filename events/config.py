"""The ``events:`` section of a region node's config: the outbox switch and the relay's bounds.
Every bound is explicit (runtime.config)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field


class WebhooksConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """Deliveries to operators' endpoints (events.webhooks): signed per Standard Webhooks."""

    enabled: bool = True
    retry_schedule_s: Annotated[
        tuple[Annotated[int, Meta(ge=1, le=86_400)], ...], Meta(min_length=1, max_length=30)
    ] = (5, 30, 120, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 43_200, 86_400)
    """Waits before each retry (jittered by up to a fifth): after the last, the delivery is
    given up (failed) and the account's later events go on."""
    disable_after_s: Annotated[int, Meta(ge=1, le=30 * 86_400)] = 5 * 86_400
    """An endpoint whose deliveries have all failed this long is disabled, with an event."""
    timeout_ms: Annotated[int, Meta(ge=100, le=60_000)] = 10_000
    concurrency: Annotated[int, Meta(ge=1, le=1_000)] = 16
    """Deliveries in flight at once, over every endpoint."""
    window: Annotated[int, Meta(ge=1, le=10_000)] = 500
    """Pending deliveries of an endpoint looked at per round, oldest first."""
    poll_interval_ms: Annotated[int, Meta(ge=1, le=60_000)] = 100
    endpoints_max: Annotated[int, Meta(ge=1, le=10_000)] = 100
    ca_file: str | None = None
    """Extra certificate authorities an endpoint's TLS may chain to (tests, private PKI)."""
    allow_private_addresses: bool = False
    """Deliver to loopback, private, link-local and other non-global addresses. Off: such an
    endpoint is refused at registration (an address) or at delivery (a name that resolves only
    to them), so a webhook cannot reach the region's own network. On for tests on 127.0.0.1."""
    deliveries_retain_s: Annotated[int, Meta(ge=60, le=365 * 86_400)] = 7 * 86_400
    """Delivered and given-up deliveries are deleted after this, at most 10,000 a minute."""


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
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    player_views: bool = True
    """Keep identity.player_views from the peers' player streams (ledger_node.player_views)."""
    peer_redis_urls: dict[str, str] = field(default_factory=dict)
    """Where a peer region's streams are, if not in redis_url's Redis."""

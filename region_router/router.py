"""Routing a request to the account's home-region ledger.

Account id -> home region (the directory's override first, else the region the id carries) ->
a healthy ledger node of that region -> one signed HTTP call over a pooled keep-alive connection.
A local account never leaves the region; a remote one costs one WAN round trip.

Failure policy (consistency over availability, per account): a region that is down, or has no
node left to try, answers ``RegionUnavailable`` (the gateway's 503 with Retry-After) at once.
A node that fails ``eject_after_failures`` times in a row is ejected for ``eject_for_ms`` and
then tried again. A call is retried on another node only when that is safe: reads, and writes
that carry an idempotency key (the ledger applies a key once, however often it arrives). Every
attempt, the retries and the whole call are bounded in time.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter

from region_router.directory import Directory, LedgerEndpoint, RegionStatus
from region_router.errors import RouterError
from region_router.http_pool import HttpPool, UpstreamConnectionError
from region_router.ledger_client import LedgerClient, LedgerResponse
from runtime.telemetry import spans_recorded
from runtime.telemetry import traceparent as current_traceparent
from wire.service_auth import ServiceKey

tracer = trace.get_tracer("regiongate.router")

UPSTREAM_ERRORS = Counter(
    "regiongate_router_upstream_errors_total",
    "Ledger calls that failed, by region and kind",
    ["region", "kind"],
)
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Ledger answers that say "this node cannot serve now" rather than "no": the call may go to
# another node (if the request is safe to repeat) and the node's failure count grows.
RETRYABLE_STATUSES = frozenset({502, 503, 504})


class RegionUnavailable(RouterError):
    """The home region cannot take the request now; the client should retry later."""

    def __init__(self, region: str | None, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(f"region {region} unavailable: {reason}")
        self.region = region
        self.reason = reason
        self.retry_after_s = retry_after_s


class UnroutableAccount(RouterError):
    """The account id is malformed or names a region the directory does not know."""

    def __init__(self, account_id: str, reason: str) -> None:
        super().__init__(f"account {account_id!r}: {reason}")
        self.account_id = account_id


@dataclass(frozen=True, slots=True)
class RouterConfig:
    local_region: str
    attempt_timeout_ms: int = 5_000
    call_timeout_ms: int = 10_000
    retries_max: int = 2
    eject_after_failures: int = 3
    eject_for_ms: int = 5_000
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks = {
            "attempt_timeout_ms": (self.attempt_timeout_ms, 10, 120_000),
            "call_timeout_ms": (self.call_timeout_ms, 10, 300_000),
            "retries_max": (self.retries_max, 0, 10),
            "eject_after_failures": (self.eject_after_failures, 1, 100),
            "eject_for_ms": (self.eject_for_ms, 10, 600_000),
            "retry_after_s": (self.retry_after_s, 1, 3600),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise RouterError(f"router {name} must be in [{low}, {high}], got {value}")


@dataclass
class _NodeHealth:
    failures: int = 0
    ejected_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Route:
    region: str
    endpoints: tuple[LedgerEndpoint, ...]
    local: bool


@dataclass
class RouterStats:
    calls: int = 0
    retries: int = 0
    ejections: int = 0
    unavailable: int = 0
    per_region: dict[str, int] = field(default_factory=dict)


class RegionRouter:
    def __init__(
        self,
        *,
        directory: Directory,
        key: ServiceKey,
        pool: HttpPool,
        config: RouterConfig,
    ) -> None:
        self._directory = directory
        self._key = key
        self._pool = pool
        self._config = config
        self._health: dict[str, _NodeHealth] = {}
        self._turn = itertools.count()
        self.stats = RouterStats()

    def route(self, account_id: str) -> Route:
        """Where an account's requests go, from the in-memory snapshot (no I/O)."""
        region = self._directory.snapshot().home_region(account_id)
        if region is None:
            raise UnroutableAccount(account_id, "not a well-formed account id")
        return self.route_region(region, account_id)

    def route_region(self, region: str, account_id: str = "") -> Route:
        """The ledger nodes to try in a region: healthy in the directory, not ejected here."""
        snapshot = self._directory.snapshot()
        record = snapshot.regions.get(region)
        if record is None:
            raise UnroutableAccount(account_id, f"region {region} is not in the directory")
        if record.status is RegionStatus.DOWN:
            raise RegionUnavailable(region, "region is down", self._config.retry_after_s)
        now = time.monotonic()
        candidates = tuple(
            endpoint
            for endpoint in snapshot.healthy_endpoints(region)
            if self._health.get(endpoint.node_id, _NodeHealth()).ejected_until <= now
        )
        if not candidates:
            raise RegionUnavailable(region, "no healthy ledger node", self._config.retry_after_s)
        return Route(region, candidates, region == self._config.local_region)

    async def call(
        self, account_id: str, method: str, path: str, *args, **kwargs
    ) -> LedgerResponse:
        """Send one request to the account's home ledger (see call_route)."""
        return await self.call_route(self.route(account_id), method, path, *args, **kwargs)

    async def call_in_region(
        self, region: str, method: str, path: str, *args, **kwargs
    ) -> LedgerResponse:
        """Send one request to a region's ledger, to create an account there say (call_route)."""
        return await self.call_route(self.route_region(region), method, path, *args, **kwargs)

    async def call_route(
        self,
        route: Route,
        method: str,
        path: str,
        body: object = None,
        *,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> LedgerResponse:
        """Send one request along a route, retrying on another node when safe (a read, or a
        write with an idempotency key)."""
        self.stats.calls += 1
        self.stats.per_region[route.region] = self.stats.per_region.get(route.region, 0) + 1
        safe = method.upper() in SAFE_METHODS or idempotency_key is not None
        attempts = 1 + (self._config.retries_max if safe else 0)
        deadline = time.monotonic() + self._config.call_timeout_ms / 1000
        start = next(self._turn)
        last_error: str = "no attempt made"
        for attempt in range(attempts):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            endpoint = route.endpoints[(start + attempt) % len(route.endpoints)]
            client = LedgerClient(endpoint.url, self._key, self._pool)
            # Unrecorded spans carry nothing the current context does not: skip their cost.
            scope = (
                tracer.start_as_current_span(
                    f"ledger {method}",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "regiongate.region": route.region,
                        "regiongate.node": endpoint.node_id,
                        "regiongate.attempt": attempt,
                        "regiongate.local": route.local,
                    },
                )
                if spans_recorded()
                else contextlib.nullcontext(trace.INVALID_SPAN)
            )
            with scope as span:
                parent = traceparent or current_traceparent()
                try:
                    response = await client.request(
                        method,
                        path,
                        body,
                        idempotency_key=idempotency_key,
                        headers={"traceparent": parent} if parent else None,
                        timeout_s=min(remaining_s, self._config.attempt_timeout_ms / 1000),
                    )
                except (UpstreamConnectionError, TimeoutError) as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    response = None
                    last_error = f"{endpoint.node_id}: {type(exc).__name__}"
                    self._failed(endpoint, "connection")
                else:
                    span.set_attribute("http.response.status_code", response.status)
            if response is not None:
                if response.status not in RETRYABLE_STATUSES:
                    self._health.pop(endpoint.node_id, None)
                    return response
                last_error = f"{endpoint.node_id}: HTTP {response.status}"
                self._failed(endpoint, str(response.status))
                if not safe or attempt == attempts - 1:
                    return response  # the ledger's own problem answer, passed through
            if attempt < attempts - 1:
                self.stats.retries += 1
        self.stats.unavailable += 1
        raise RegionUnavailable(route.region, last_error, self._config.retry_after_s)

    def _failed(self, endpoint: LedgerEndpoint, kind: str) -> None:
        UPSTREAM_ERRORS.labels(endpoint.region, kind).inc()
        health = self._health.setdefault(endpoint.node_id, _NodeHealth())
        health.failures += 1
        if health.failures >= self._config.eject_after_failures:
            health.ejected_until = time.monotonic() + self._config.eject_for_ms / 1000
            health.failures = 0
            self.stats.ejections += 1

"""The directory: which regions exist and in what state, the ledger nodes of each region with
their health, and the rare account re-home overrides.

Routers serve every lookup from an in-memory ``DirectorySnapshot``; backends (a YAML file
locally, Consul in production) replace the snapshot when their source changes and keep the last
one when their source cannot be read, so an outage of the directory never fails a request on
its own. Snapshots are immutable and carry a version that only grows.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from prometheus_client import Counter, Gauge

from region_router.errors import DirectoryError
from wire.ids import IDENTITY_SLOTS, REGION_PATTERN, region_of

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OVERRIDES_MAX = 1_000_000


class RegionStatus(enum.StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"  # serves its own accounts; takes no new ones
    DOWN = "down"  # its accounts are refused (503) until it comes back


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    status: RegionStatus
    peers: tuple[str, ...] = ()
    currencies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not REGION_PATTERN.match(self.code):
            raise DirectoryError(f"region code must match {REGION_PATTERN.pattern}: {self.code!r}")
        for peer in self.peers:
            if not REGION_PATTERN.match(peer) or peer == self.code:
                raise DirectoryError(f"region {self.code}: bad peer {peer!r}")


@dataclass(frozen=True, slots=True)
class LedgerEndpoint:
    region: str
    node_id: str
    url: str
    healthy: bool = True

    def __post_init__(self) -> None:
        if not NODE_ID_PATTERN.match(self.node_id):
            raise DirectoryError(f"ledger node id must match {NODE_ID_PATTERN.pattern}")
        if not self.url.startswith(("http://", "https://")):
            raise DirectoryError(
                f"ledger node {self.node_id}: url must be http(s), got {self.url!r}"
            )


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Identity slots first..last (inclusive) are owned by region."""

    first: int
    last: int
    region: str


def parse_slot_ranges(raw) -> tuple[SlotRange, ...]:
    """``[{first, last, region}, ...]`` as SlotRanges (their coverage is build_snapshot's)."""
    if raw is None:
        return ()
    try:
        return tuple(SlotRange(int(r["first"]), int(r["last"]), str(r["region"])) for r in raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise DirectoryError(f"identity_slots: bad range: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    version: int
    regions: Mapping[str, Region] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, tuple[LedgerEndpoint, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """account id -> home region, for accounts moved away from the region in their id."""
    slot_owners: tuple[str, ...] = ()
    """The region owning each identity slot (wire.ids.identity_slot), IDENTITY_SLOTS long; empty
    while the directory assigns none."""
    default_region: str | None = None
    """Where an account is created when neither the request nor its client names a region:
    one record for every gateway, so a retry through any of them lands in the same region
    (docs/decisions/0001). None: such a creation is refused."""

    def home_region(self, account_id: str) -> str | None:
        """The override first, else the region the id carries; None for a malformed id."""
        override = self.overrides.get(account_id)
        if override is not None:
            return override
        return region_of(account_id)

    def slot_owner(self, slot: int) -> str | None:
        """The region that owns an identity slot, or None while slots are not assigned."""
        return self.slot_owners[slot] if self.slot_owners else None

    def healthy_endpoints(self, region: str) -> tuple[LedgerEndpoint, ...]:
        return tuple(e for e in self.endpoints.get(region, ()) if e.healthy)


def build_snapshot(
    version: int,
    regions: list[Region],
    endpoints: list[LedgerEndpoint],
    overrides: dict[str, str],
    default_region: str | None = None,
    slot_ranges: tuple[SlotRange, ...] = (),
) -> DirectorySnapshot:
    """Validate the records as a whole (no duplicate regions, endpoints and overrides naming
    known regions) and freeze them."""
    by_code: dict[str, Region] = {}
    for region in regions:
        if region.code in by_code:
            raise DirectoryError(f"region {region.code} is listed twice")
        by_code[region.code] = region
    grouped: dict[str, list[LedgerEndpoint]] = {code: [] for code in by_code}
    for endpoint in endpoints:
        if endpoint.region not in by_code:
            raise DirectoryError(
                f"ledger node {endpoint.node_id}: unknown region {endpoint.region}"
            )
        grouped[endpoint.region].append(endpoint)
    if len(overrides) > OVERRIDES_MAX:
        raise DirectoryError(f"more than {OVERRIDES_MAX} re-home overrides")
    for account_id, region in overrides.items():
        if region not in by_code:
            raise DirectoryError(f"override for {account_id}: unknown region {region}")
        if region_of(account_id) is None:
            raise DirectoryError(f"override for a malformed account id {account_id!r}")
    if default_region is not None and default_region not in by_code:
        raise DirectoryError(f"default_region {default_region!r} is not a known region")
    return DirectorySnapshot(
        version=version,
        default_region=default_region,
        slot_owners=_slot_owners(slot_ranges, by_code),
        regions=MappingProxyType(by_code),
        endpoints=MappingProxyType({code: tuple(items) for code, items in grouped.items()}),
        overrides=MappingProxyType(dict(overrides)),
    )


Listener = Callable[[DirectorySnapshot], None]


class Directory(Protocol):
    """What every backend provides; the contract tests hold each backend to it."""

    async def start(self) -> None:
        """Load the first snapshot (raising DirectoryError if there is none to be had), then
        keep it current in the background."""

    async def stop(self) -> None: ...

    def snapshot(self) -> DirectorySnapshot:
        """The current snapshot, from memory."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener with every new snapshot; returns a function that unsubscribes."""


DIRECTORY_READ_FAILURES = Counter(
    "regiongate_directory_read_failures_total",
    "Reads of the directory's source that failed (the last snapshot stayed in force)",
    ["backend"],
)
DIRECTORY_LAST_READ = Gauge(
    "regiongate_directory_last_read_timestamp_seconds",
    "When the directory's source was last read successfully, changed or not",
    ["backend"],
)


def _slot_owners(ranges: tuple[SlotRange, ...], regions: Mapping[str, Region]) -> tuple[str, ...]:
    """Each slot's region; the ranges must cover every slot exactly once, or be absent."""
    if not ranges:
        return ()
    owners: list[str | None] = [None] * IDENTITY_SLOTS
    for span in ranges:
        if span.region not in regions:
            raise DirectoryError(f"identity slots {span.first}-{span.last}: unknown region")
        if not 0 <= span.first <= span.last < IDENTITY_SLOTS:
            raise DirectoryError(f"identity slots {span.first}-{span.last}: out of range")
        for slot in range(span.first, span.last + 1):
            if owners[slot] is not None:
                raise DirectoryError(f"identity slot {slot} is assigned twice")
            owners[slot] = span.region
    missing = [slot for slot, owner in enumerate(owners) if owner is None]
    if missing:
        raise DirectoryError(f"identity slots unassigned, first {missing[0]}")
    return tuple(owners)


class SnapshotHolder:
    """The part every backend shares: the current snapshot, versioning, listeners, and the
    health of its reads (``last_error`` and the two directory metrics)."""

    backend = "unknown"

    def __init__(self) -> None:
        self._snapshot = DirectorySnapshot(version=0)
        self._listeners: list[Listener] = []
        self.changed = asyncio.Event()
        self.last_error: str | None = None

    def read_succeeded(self) -> None:
        self.last_error = None
        DIRECTORY_LAST_READ.labels(self.backend).set_to_current_time()

    def read_failed(self, error: str) -> None:
        self.last_error = error
        DIRECTORY_READ_FAILURES.labels(self.backend).inc()

    def snapshot(self) -> DirectorySnapshot:
        return self._snapshot

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(
        self,
        regions: list[Region],
        endpoints: list[LedgerEndpoint],
        overrides: dict[str, str],
        default_region: str | None = None,
        slot_ranges: tuple[SlotRange, ...] = (),
    ) -> bool:
        """Replace the snapshot if the records differ; return whether they did."""
        candidate = build_snapshot(
            self._snapshot.version + 1, regions, endpoints, overrides, default_region, slot_ranges
        )
        current = self._snapshot
        if (
            current.version
            and candidate.default_region == current.default_region
            and candidate.slot_owners == current.slot_owners
            and dict(candidate.regions) == dict(current.regions)
            and dict(candidate.endpoints) == dict(current.endpoints)
            and dict(candidate.overrides) == dict(current.overrides)
        ):
            return False
        self._snapshot = candidate
        for listener in list(self._listeners):
            listener(candidate)
        self.changed.set()
        self.changed = asyncio.Event()
        return True

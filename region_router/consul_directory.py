"""The directory from Consul, through py-consul's asyncio client (``consul.aio``).

Records live under one KV prefix (default ``regiongate/``):

- ``<prefix>regions/<code>``: JSON ``{"status": "active", "peers": [...], "currencies": [...]}``
- ``<prefix>overrides/<account id>``: the region code, as plain text
- ``<prefix>default_region``: where a creation that names no region goes, as plain text
- ``<prefix>identity_slots``: JSON ``[{"first": 0, "last": 511, "region": "eu"}, ...]``

Ledger nodes register as the service ``regiongate-ledger`` (service meta ``region``, and
``scheme`` when not http) in their region's datacenter; a node is healthy when every check on it
passes.

Watching follows Consul's blocking-query rules (api-docs "Blocking Queries"): send the last
``X-Consul-Index`` as ``index`` with a bounded ``wait`` (at most 10 minutes; Consul adds up to
wait/16 of jitter, so the client timeout allows for it); reset the index to 0 when it goes
backwards; never send an index below 1 once one has been seen; and rate-limit each watch loop,
since a blocking query may return at once without a change. When Consul cannot be reached the
last snapshot stays in force and the loop backs off with jitter, up to a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import aiohttp
import consul
import consul.aio
import msgspec
from msgspec import Struct
from yarl import URL

from region_router.directory import (
    LedgerEndpoint,
    Region,
    RegionStatus,
    SlotRange,
    SnapshotHolder,
    parse_slot_ranges,
)
from region_router.errors import DirectoryError

log = logging.getLogger("regiongate.router.consul")

WAIT_S_MAX = 600  # Consul's own limit on a blocking query's wait


class ConsulSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """The ``consul:`` section of a service's config. The ACL token is never here: it comes
    from ``token_file`` or the CONSUL_HTTP_TOKEN environment variable (region_router.backends)."""

    address: str = "http://127.0.0.1:8500"
    """The local agent's HTTP address."""
    prefix: str = "regiongate/"
    service: str = "regiongate-ledger"
    datacenters: tuple[str, ...] = ()
    """Datacenters whose ledger nodes to watch (one per region); empty: the agent's own."""
    token_file: str | None = None
    wait_s: int = 30
    """Longest a blocking query waits for a change (Consul's own limit is 600)."""
    loop_interval_ms_min: int = 100
    """Rate limit of each watch loop: at most one query per this interval."""
    backoff_ms_max: int = 10_000
    """Longest pause after a failed query."""

    def __post_init__(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            raise DirectoryError(f"consul address must be http(s), got {self.address!r}")
        if not self.prefix.endswith("/"):
            raise DirectoryError(f"consul prefix must end with '/', got {self.prefix!r}")
        if not 1 <= self.wait_s <= WAIT_S_MAX:
            raise DirectoryError(f"wait_s must be in [1, {WAIT_S_MAX}], got {self.wait_s}")
        if not 10 <= self.loop_interval_ms_min <= 60_000:
            raise DirectoryError(f"loop_interval_ms_min out of range: {self.loop_interval_ms_min}")
        if not 100 <= self.backoff_ms_max <= 600_000:
            raise DirectoryError(f"backoff_ms_max out of range: {self.backoff_ms_max}")


class ConsulConfig(ConsulSettings, frozen=True):
    """The settings as the backend runs with them: the token resolved, and a margin on every
    call's timeout."""

    token: str | None = None
    """ACL token; from the environment or a file, never from committed config."""
    request_timeout_margin_s: float = 5.0


def next_index(previous: int, returned: int | None) -> int:
    """The index to send next, by the rules of Consul's blocking-query docs."""
    if returned is None:
        return previous
    if returned < previous:  # the index went backwards (a snapshot restore, a new leader)
        return 0
    return max(returned, 1)


def parse_kv(
    entries: list[dict], prefix: str
) -> tuple[list[Region], dict[str, str], str | None, tuple[SlotRange, ...]]:
    regions, overrides, default_region, slot_ranges = [], {}, None, ()
    for entry in entries:
        key = entry["Key"][len(prefix) :]
        raw = entry.get("Value") or b""  # py-consul decodes the base64 it came in
        kind, _, name = key.partition("/")
        if kind == "regions" and name:
            try:
                record = msgspec.json.decode(raw)
                regions.append(
                    Region(
                        code=name,
                        status=RegionStatus(record.get("status", "active")),
                        peers=tuple(record.get("peers", ())),
                        currencies=tuple(record.get("currencies", ())),
                    )
                )
            except (msgspec.DecodeError, ValueError, AttributeError) as exc:
                raise DirectoryError(f"consul key {entry['Key']}: bad region record") from exc
        elif kind == "overrides" and name:
            overrides[name] = raw.decode().strip()
        elif kind == "default_region" and not name:
            default_region = raw.decode().strip() or None
        elif kind == "identity_slots" and not name:
            try:
                slot_ranges = parse_slot_ranges(msgspec.json.decode(raw))
            except msgspec.DecodeError as exc:
                raise DirectoryError(f"consul key {entry['Key']}: not JSON") from exc
    return regions, overrides, default_region, slot_ranges


def parse_health(entries: list[dict]) -> list[LedgerEndpoint]:
    endpoints = []
    for entry in entries:
        service = entry["Service"]
        meta = service.get("Meta") or {}
        address = service.get("Address") or entry["Node"]["Address"]
        scheme = meta.get("scheme", "http")
        healthy = all(check.get("Status") == "passing" for check in entry.get("Checks", []))
        endpoints.append(
            LedgerEndpoint(
                region=meta.get("region", ""),
                node_id=service["ID"],
                url=f"{scheme}://{address}:{service['Port']}",
                healthy=healthy,
            )
        )
    return endpoints


class ConsulDirectory(SnapshotHolder):
    """A directory backend: its snapshots, versions and listeners are SnapshotHolder's."""

    backend = "consul"

    def __init__(self, config: ConsulConfig) -> None:
        self._config = config
        super().__init__()
        self._consul: consul.aio.Consul | None = None
        self._tasks: list[asyncio.Task] = []
        self._regions: list[Region] = []
        self._overrides: dict[str, str] = {}
        self._default_region: str | None = None
        self._slot_ranges: tuple[SlotRange, ...] = ()
        self._endpoints: dict[str, list[LedgerEndpoint]] = {}

    async def start(self) -> None:
        address = URL(self._config.address)
        self._consul = consul.aio.Consul(
            host=address.host,
            port=address.port,
            scheme=address.scheme,
            token=self._config.token,
        )
        try:
            kv_index = await self._poll_kv(0, blocking=False)
            health_indexes = {}
            for datacenter in self._config.datacenters or (None,):
                health_indexes[datacenter] = await self._poll_health(datacenter, 0, False)
            self._publish()
            self.read_succeeded()
        except (aiohttp.ClientError, consul.ConsulException, TimeoutError, DirectoryError) as exc:
            await self._consul.close()
            raise DirectoryError(f"cannot load the directory from Consul: {exc!r}") from exc
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(self._poll_kv, kv_index), name="consul-kv")]
        for datacenter, index in health_indexes.items():
            self._tasks.append(
                loop.create_task(
                    self._watch(lambda i, b, dc=datacenter: self._poll_health(dc, i, b), index),
                    name=f"consul-health-{datacenter or 'local'}",
                )
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._consul is not None:
            await self._consul.close()

    def _timeout_s(self, blocking: bool) -> float:
        """A blocking query may take its wait plus Consul's jitter (wait/16), then the margin."""
        margin_s = self._config.request_timeout_margin_s
        return self._config.wait_s * 17 / 16 + margin_s if blocking else margin_s

    def _blocking(self, index: int, blocking: bool) -> dict:
        return {"index": index, "wait": f"{self._config.wait_s}s"} if blocking else {}

    async def _poll_kv(self, index: int, blocking: bool = True) -> int:
        async with asyncio.timeout(self._timeout_s(blocking)):
            returned, entries = await self._consul.kv.get(
                self._config.prefix, recurse=True, **self._blocking(index, blocking)
            )
        # None: no keys under the prefix yet, which is an empty directory, not an error.
        self._regions, self._overrides, self._default_region, self._slot_ranges = parse_kv(
            entries or [], self._config.prefix
        )
        return next_index(index, _index(returned))

    async def _poll_health(self, datacenter: str | None, index: int, blocking: bool = True) -> int:
        async with asyncio.timeout(self._timeout_s(blocking)):
            returned, entries = await self._consul.health.service(
                self._config.service, dc=datacenter, **self._blocking(index, blocking)
            )
        self._endpoints[datacenter or ""] = parse_health(entries or [])
        return next_index(index, _index(returned))

    def _publish(self) -> None:
        endpoints = [e for items in self._endpoints.values() for e in items]
        known = {region.code for region in self._regions}
        # A node registered for a region the KV does not (yet) describe is left out rather than
        # failing the whole snapshot.
        self.publish(
            self._regions,
            [e for e in endpoints if e.region in known],
            self._overrides,
            self._default_region,
            self._slot_ranges,
        )

    async def _watch(self, poll, index: int) -> None:
        interval_s = self._config.loop_interval_ms_min / 1000
        failures = 0
        while True:
            started = time.monotonic()
            try:
                index = await poll(index, True)
                self._publish()
                self.read_succeeded()
                failures = 0
            except (
                aiohttp.ClientError,
                consul.ConsulException,
                TimeoutError,
                DirectoryError,
                ValueError,
            ) as exc:
                # Consul unreachable or answering nonsense: keep routing on the last snapshot.
                failures += 1
                self.read_failed(f"{type(exc).__name__}: {exc}")
                log.warning(
                    "consul watch failed (%d in a row), keeping the last snapshot: %s",
                    failures,
                    self.last_error,
                )
                cap_ms = min(self._config.backoff_ms_max, 100 * 2 ** min(failures, 16))
                await asyncio.sleep(random.uniform(cap_ms / 2, cap_ms) / 1000)
                continue
            elapsed_s = time.monotonic() - started
            if elapsed_s < interval_s:
                await asyncio.sleep(interval_s - elapsed_s)


def _index(returned) -> int | None:
    """X-Consul-Index as py-consul hands it over (a string), or None when there was none."""
    return int(returned) if returned is not None and str(returned).isdigit() else None

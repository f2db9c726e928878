"""The directory from a YAML file: the local cluster's and the tests' backend.

The file is re-read when its modification time or size changes, polled every ``poll_ms``. A file
that cannot be read or does not validate keeps the last good snapshot (and is reported), exactly
as a Consul outage does for the Consul backend.

File format::

    regions:
      - {code: eu, status: active, peers: [us, ap], currencies: [EUR, GBP]}
    ledger_nodes:
      - {region: eu, node_id: eu-1, url: "http://127.0.0.1:8101", healthy: true}
    overrides:
      eu-01m80...: us
    default_region: eu      # where a creation that names no region goes (optional)
    identity_slots:         # who owns each identity hash slot (optional; all or none)
      - {first: 0, last: 511, region: eu}
      - {first: 512, last: 1023, region: us}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import yaml

from region_router.directory import (
    LedgerEndpoint,
    Region,
    RegionStatus,
    SlotRange,
    SnapshotHolder,
    parse_slot_ranges,
)
from region_router.errors import DirectoryError

log = logging.getLogger("regiongate.router.directory")

POLL_MS_MIN = 10
POLL_MS_MAX = 60_000
FILE_SIZE_MAX_BYTES = 64 * 1024 * 1024


def parse_directory_file(
    text: str,
) -> tuple[list[Region], list[LedgerEndpoint], dict[str, str], str | None, tuple[SlotRange, ...]]:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DirectoryError(f"directory file is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DirectoryError("directory file must be a mapping")
    unknown = set(raw) - {
        "regions",
        "ledger_nodes",
        "overrides",
        "default_region",
        "identity_slots",
    }
    if unknown:
        raise DirectoryError(f"directory file: unknown keys {sorted(unknown)}")
    try:
        regions = [
            Region(
                code=item["code"],
                status=RegionStatus(item.get("status", "active")),
                peers=tuple(item.get("peers", ())),
                currencies=tuple(item.get("currencies", ())),
            )
            for item in raw.get("regions") or []
        ]
        endpoints = [
            LedgerEndpoint(
                region=item["region"],
                node_id=str(item["node_id"]),
                url=item["url"],
                healthy=bool(item.get("healthy", True)),
            )
            for item in raw.get("ledger_nodes") or []
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise DirectoryError(f"directory file: bad record: {exc!r}") from exc
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
    ):
        raise DirectoryError("directory file: overrides must map account ids to region codes")
    default_region = raw.get("default_region")
    if default_region is not None and not isinstance(default_region, str):
        raise DirectoryError("directory file: default_region must be a region code")
    return (
        regions,
        endpoints,
        overrides,
        default_region,
        parse_slot_ranges(raw.get("identity_slots")),
    )


class YamlDirectory(SnapshotHolder):
    """A directory backend: its snapshots, versions and listeners are SnapshotHolder's."""

    backend = "yaml"

    def __init__(self, path: str | Path, *, poll_ms: int = 500) -> None:
        if not POLL_MS_MIN <= poll_ms <= POLL_MS_MAX:
            raise DirectoryError(
                f"poll_ms must be in [{POLL_MS_MIN}, {POLL_MS_MAX}], got {poll_ms}"
            )
        self._path = Path(path)
        self._poll_s = poll_ms / 1000
        super().__init__()
        self._stamp: tuple[int, int] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._load(raise_errors=True)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="yaml-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _load(self, raise_errors: bool) -> None:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                if stat.st_size > FILE_SIZE_MAX_BYTES:
                    raise DirectoryError(f"directory file is over {FILE_SIZE_MAX_BYTES} bytes")
                self.publish(*parse_directory_file(self._path.read_text()))
                self._stamp = stamp
            self.read_succeeded()
        except (OSError, DirectoryError) as exc:
            self.read_failed(str(exc))
            if raise_errors:
                raise DirectoryError(f"cannot load directory {self._path}: {exc}") from exc
            log.warning("directory %s unchanged, keeping the last snapshot: %s", self._path, exc)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            self._load(raise_errors=False)


def write_directory_file(
    path: Path,
    regions,
    endpoints,
    overrides,
    default_region: str | None = None,
    slot_ranges: tuple[SlotRange, ...] = (),
) -> None:
    """Write a directory file atomically (a reader never sees half of it)."""
    document = {
        "regions": [
            {
                "code": r.code,
                "status": r.status.value,
                "peers": list(r.peers),
                "currencies": list(r.currencies),
            }
            for r in regions
        ],
        "ledger_nodes": [
            {"region": e.region, "node_id": e.node_id, "url": e.url, "healthy": e.healthy}
            for e in endpoints
        ],
        "overrides": dict(overrides),
    }
    if default_region is not None:
        document["default_region"] = default_region
    if slot_ranges:
        document["identity_slots"] = [
            {"first": r.first, "last": r.last, "region": r.region} for r in slot_ranges
        ]
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(yaml.safe_dump(document, sort_keys=False))
    os.replace(temporary, path)

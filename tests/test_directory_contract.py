"""The directory contract: every backend answers the same questions the same way. Each test runs
once per available backend (the test id names it); the Consul backend joins this table with
issue 3. Proved: the first snapshot loads; home region comes from the override first, else the
account id; changes are seen within a bounded time with a version that only grows, and
listeners hear them; unhealthy nodes are not offered; a source that breaks or disappears keeps
the last good snapshot; inconsistent records are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from region_router.directory import (
    LedgerEndpoint,
    Region,
    RegionStatus,
    build_snapshot,
)
from region_router.errors import DirectoryError
from region_router.yaml_directory import YamlDirectory, write_directory_file
from tests.support import assert_eventually

CHANGE_SEEN_WITHIN_S = 5.0

REGIONS = [
    Region("eu", RegionStatus.ACTIVE, ("us", "ap"), ("EUR",)),
    Region("us", RegionStatus.ACTIVE, ("eu", "ap"), ("USD",)),
    Region("ap", RegionStatus.DRAINING, ("eu", "us"), ("USD",)),
]
ENDPOINTS = [
    LedgerEndpoint("eu", "eu-1", "http://127.0.0.1:8101"),
    LedgerEndpoint("eu", "eu-2", "http://127.0.0.1:8111", healthy=False),
    LedgerEndpoint("us", "us-1", "http://127.0.0.1:8102"),
]


class YamlBackend:
    name = "yaml"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "directory.yaml"

    async def write(self, regions, endpoints, overrides) -> None:
        write_directory_file(self.path, regions, endpoints, overrides)

    async def break_source(self) -> None:
        self.path.write_text("regions: [this is not: valid")

    async def remove_source(self) -> None:
        self.path.unlink()

    def directory(self):
        return YamlDirectory(self.path, poll_ms=20)


BACKENDS = {"yaml": YamlBackend}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request, tmp_path):
    return BACKENDS[request.param](tmp_path)


async def started(backend, overrides=None):
    await backend.write(REGIONS, ENDPOINTS, overrides or {})
    directory = backend.directory()
    await directory.start()
    return directory


async def test_first_snapshot_and_home_region(backend):
    directory = await started(backend, {"eu-moved": "us"})
    try:
        snapshot = directory.snapshot()
        assert snapshot.version >= 1
        assert set(snapshot.regions) == {"eu", "us", "ap"}
        assert snapshot.regions["ap"].status is RegionStatus.DRAINING
        assert snapshot.home_region("eu-abc") == "eu"
        assert snapshot.home_region("eu-moved") == "us"  # the override wins over the id
        assert snapshot.home_region("not an id") is None
        assert [e.node_id for e in snapshot.healthy_endpoints("eu")] == ["eu-1"]
        assert snapshot.healthy_endpoints("ap") == ()
    finally:
        await directory.stop()


async def test_changes_are_followed_within_a_bound(backend):
    directory = await started(backend)
    heard = []
    directory.subscribe(heard.append)
    try:
        first = directory.snapshot().version
        await backend.write(REGIONS, ENDPOINTS, {"eu-rehomed": "ap"})

        async def followed() -> bool:
            return directory.snapshot().home_region("eu-rehomed") == "ap"

        await assert_eventually(followed, timeout_s=CHANGE_SEEN_WITHIN_S)
        assert directory.snapshot().version > first
        assert heard and heard[-1].home_region("eu-rehomed") == "ap"
    finally:
        await directory.stop()


async def test_a_broken_or_missing_source_keeps_the_last_snapshot(backend):
    directory = await started(backend, {"eu-kept": "us"})
    try:
        before = directory.snapshot()
        await backend.break_source()
        await backend.remove_source()

        async def noticed() -> bool:
            return directory.last_error is not None

        await assert_eventually(noticed, timeout_s=CHANGE_SEEN_WITHIN_S)
        assert directory.snapshot() is before
        assert directory.snapshot().home_region("eu-kept") == "us"
    finally:
        await directory.stop()


async def test_start_without_a_usable_source_fails_loudly(backend):
    await backend.write(REGIONS, ENDPOINTS, {})
    await backend.break_source()
    with pytest.raises(DirectoryError):
        await backend.directory().start()


@pytest.mark.parametrize(
    ("regions", "endpoints", "overrides", "message"),
    [
        ([REGIONS[0], REGIONS[0]], [], {}, "listed twice"),
        ([REGIONS[0]], [LedgerEndpoint("us", "us-1", "http://x")], {}, "unknown region"),
        ([REGIONS[0]], [], {"eu-a": "zz"}, "unknown region"),
        ([REGIONS[0]], [], {"BAD ID": "eu"}, "malformed"),
    ],
)
def test_inconsistent_records_are_refused(regions, endpoints, overrides, message):
    with pytest.raises(DirectoryError, match=message):
        build_snapshot(1, regions, endpoints, overrides)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Region("EU", RegionStatus.ACTIVE),
        lambda: Region("eu", RegionStatus.ACTIVE, ("eu",)),
        lambda: LedgerEndpoint("eu", "bad id!", "http://x"),
        lambda: LedgerEndpoint("eu", "eu-1", "ftp://x"),
    ],
)
def test_malformed_records_are_refused(make):
    with pytest.raises(DirectoryError):
        make()

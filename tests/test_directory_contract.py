"""The directory contract: every backend answers the same questions the same way.

Each test runs once per available backend, and the test id names it: the YAML file always;
Consul through a real agent when ``CONSUL_HTTP_ADDR`` is set or ``consul`` is on PATH (a dev
agent is then started for the session), and otherwise through the documented-API test double in
``tests/consul_double.py`` (id ``consul-double``).

Proved: the first snapshot loads; home region comes from the override first, else the account
id; changes are seen within a bounded time with a version that only grows, and listeners hear
them; unhealthy nodes are not offered; a source that breaks or disappears keeps the last good
snapshot; inconsistent records are refused; Consul's index rules hold.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from infra.services import free_port, wait_for_port
from region_router.consul_directory import ConsulConfig, ConsulDirectory, next_index
from region_router.directory import (
    LedgerEndpoint,
    Region,
    RegionStatus,
    SlotRange,
    build_snapshot,
)
from region_router.errors import DirectoryError
from region_router.yaml_directory import YamlDirectory, write_directory_file
from tests.consul_double import ConsulDouble
from tests.support import assert_eventually
from wire.ids import IDENTITY_SLOTS, identity_slot

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


def _slots_json(slots) -> bytes:
    return json.dumps(
        [{"first": r.first, "last": r.last, "region": r.region} for r in slots]
    ).encode()


class YamlBackend:
    name = "yaml"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "directory.yaml"

    async def write(self, regions, endpoints, overrides, default_region=None, slots=()) -> None:
        write_directory_file(self.path, regions, endpoints, overrides, default_region, slots)

    async def break_source(self) -> None:
        self.path.write_text("regions: [this is not: valid")

    async def remove_source(self) -> None:
        self.path.unlink()

    def directory(self):
        return YamlDirectory(self.path, poll_ms=20)


class ConsulDoubleBackend:
    name = "consul-double"
    prefix = "regiongate/"

    def __init__(self, tmp_path: Path) -> None:
        self.double = ConsulDouble()

    async def write(self, regions, endpoints, overrides, default_region=None, slots=()) -> None:
        self.double.delete_prefix(self.prefix)
        if default_region is not None:
            self.double.put(f"{self.prefix}default_region", default_region.encode())
        if slots:
            self.double.put(f"{self.prefix}identity_slots", _slots_json(slots))
        for region in regions:
            record = {
                "status": region.status.value,
                "peers": list(region.peers),
                "currencies": list(region.currencies),
            }
            self.double.put(f"{self.prefix}regions/{region.code}", json.dumps(record).encode())
        for account_id, region in overrides.items():
            self.double.put(f"{self.prefix}overrides/{account_id}", region.encode())
        self.double.clear_services()
        for endpoint in endpoints:
            port = int(endpoint.url.rsplit(":", 1)[1])
            self.double.register(
                endpoint.node_id, "regiongate-ledger", endpoint.region, port, endpoint.healthy
            )

    async def break_source(self) -> None:
        self.double.failing = True

    async def remove_source(self) -> None:
        await self.double.stop()

    def directory(self):
        return ConsulDirectory(
            ConsulConfig(
                address=self.double.address,
                prefix=self.prefix,
                wait_s=1,
                loop_interval_ms_min=10,
                backoff_ms_max=200,
            )
        )


class ConsulAgentBackend(ConsulDoubleBackend):
    """A real agent at CONSUL_HTTP_ADDR, written through its HTTP API."""

    name = "consul-agent"

    def __init__(self, tmp_path: Path, address: str) -> None:
        self.address = address if address.startswith("http") else "http://" + address
        self.prefix = f"regiongate-test-{uuid.uuid4().hex[:8]}/"

    async def write(self, regions, endpoints, overrides, default_region=None, slots=()) -> None:
        async with aiohttp.ClientSession() as http:
            await http.delete(f"{self.address}/v1/kv/{self.prefix}?recurse=true")
            if default_region is not None:
                await http.put(
                    f"{self.address}/v1/kv/{self.prefix}default_region", data=default_region
                )
            if slots:
                await http.put(
                    f"{self.address}/v1/kv/{self.prefix}identity_slots", data=_slots_json(slots)
                )
            for region in regions:
                record = {
                    "status": region.status.value,
                    "peers": list(region.peers),
                    "currencies": list(region.currencies),
                }
                await http.put(
                    f"{self.address}/v1/kv/{self.prefix}regions/{region.code}",
                    data=json.dumps(record),
                )
            for account_id, region in overrides.items():
                await http.put(
                    f"{self.address}/v1/kv/{self.prefix}overrides/{account_id}", data=region
                )
            for endpoint in endpoints:
                port = int(endpoint.url.rsplit(":", 1)[1])
                service_id = f"{self.prefix[:-1]}-{endpoint.node_id}"
                await http.put(
                    f"{self.address}/v1/agent/service/register",
                    json={
                        "ID": service_id,
                        "Name": "regiongate-ledger",
                        "Address": "127.0.0.1",
                        "Port": port,
                        "Meta": {"region": endpoint.region},
                        "Check": {"CheckID": f"{service_id}-ttl", "TTL": "60s"},
                    },
                )
                state = "pass" if endpoint.healthy else "fail"
                await http.put(f"{self.address}/v1/agent/check/{state}/{service_id}-ttl")

    async def break_source(self) -> None:
        pytest.skip("a real agent cannot be broken from a test")

    async def remove_source(self) -> None:
        pytest.skip("a real agent cannot be taken down from a test")

    def directory(self):
        return ConsulDirectory(
            ConsulConfig(
                address=self.address,
                prefix=self.prefix,
                wait_s=1,
                loop_interval_ms_min=10,
                backoff_ms_max=200,
            )
        )


REAL_CONSUL = bool(os.environ.get("CONSUL_HTTP_ADDR") or shutil.which("consul"))
BACKENDS = {
    "yaml": YamlBackend,
    "consul-agent" if REAL_CONSUL else "consul-double": (
        ConsulAgentBackend if REAL_CONSUL else ConsulDoubleBackend
    ),
}


@pytest.fixture(scope="session")
def consul_agent_address(services_dir: Path):
    """CONSUL_HTTP_ADDR, or a dev agent of our own when only the binary is on PATH."""
    address = os.environ.get("CONSUL_HTTP_ADDR")
    if address:
        yield address
        return
    port = free_port()
    agent = subprocess.Popen(
        [
            "consul",
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-http-port",
            str(port),
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-data-dir",
            str(services_dir / "consul"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 30):
            raise RuntimeError("consul dev agent did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        agent.terminate()
        agent.wait(timeout=30)


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request, tmp_path):
    cls = BACKENDS[request.param]
    if cls is ConsulAgentBackend:
        chosen = cls(tmp_path, request.getfixturevalue("consul_agent_address"))
    else:
        chosen = cls(tmp_path)
    double = getattr(chosen, "double", None)
    if double is not None:
        await double.start()
    yield chosen
    if double is not None:
        await double.stop()


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


async def test_the_default_region_for_creations_is_one_record_for_everyone(backend):
    directory = await started(backend)
    try:
        assert directory.snapshot().default_region is None
        await backend.write(REGIONS, ENDPOINTS, {}, default_region="us")

        async def followed() -> bool:
            return directory.snapshot().default_region == "us"

        await assert_eventually(followed, timeout_s=CHANGE_SEEN_WITHIN_S)
    finally:
        await directory.stop()
    with pytest.raises(DirectoryError, match="default_region"):
        build_snapshot(1, REGIONS, ENDPOINTS, {}, "zz")


async def test_identity_slots_are_owned_by_regions_and_follow_changes(backend):
    halves = (SlotRange(0, 511, "eu"), SlotRange(512, IDENTITY_SLOTS - 1, "us"))
    await backend.write(REGIONS, ENDPOINTS, {}, slots=halves)
    directory = backend.directory()
    await directory.start()
    try:
        snapshot = directory.snapshot()
        assert snapshot.slot_owner(0) == "eu" and snapshot.slot_owner(IDENTITY_SLOTS - 1) == "us"
        owner = snapshot.slot_owner(identity_slot("juliet"))
        assert owner in ("eu", "us")
        moved = (SlotRange(0, IDENTITY_SLOTS - 1, "ap"),)  # every slot moves to ap
        await backend.write(REGIONS, ENDPOINTS, {}, slots=moved)

        async def followed() -> bool:
            return directory.snapshot().slot_owner(identity_slot("juliet")) == "ap"

        await assert_eventually(followed, timeout_s=CHANGE_SEEN_WITHIN_S)
    finally:
        await directory.stop()
    for bad, message in (
        ((SlotRange(0, 511, "eu"),), "unassigned"),
        ((SlotRange(0, 600, "eu"), SlotRange(500, IDENTITY_SLOTS - 1, "us")), "twice"),
        ((SlotRange(0, IDENTITY_SLOTS - 1, "zz"),), "unknown region"),
        ((SlotRange(0, IDENTITY_SLOTS, "eu"),), "out of range"),
    ):
        with pytest.raises(DirectoryError, match=message):
            build_snapshot(1, REGIONS, ENDPOINTS, {}, None, bad)


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


@pytest.mark.parametrize(
    ("previous", "returned", "expected"),
    [(0, 5, 5), (5, 7, 7), (7, 7, 7), (9, 3, 0), (4, 0, 0), (0, 0, 1), (3, None, 3)],
)
def test_consul_index_rules(previous, returned, expected):
    """Consul's blocking-query rules: reset when the index goes backwards, never below 1."""
    assert next_index(previous, returned) == expected


async def test_consul_outage_keeps_routing_then_follows_again(tmp_path):
    backend = ConsulDoubleBackend(tmp_path)
    await backend.double.start()
    directory = await started(backend, {"eu-a": "us"})
    try:
        await backend.double.stop()

        async def outage_noticed() -> bool:
            return directory.last_error is not None

        await assert_eventually(outage_noticed, timeout_s=CHANGE_SEEN_WITHIN_S)
        assert directory.snapshot().home_region("eu-a") == "us"
        assert [e.node_id for e in directory.snapshot().healthy_endpoints("eu")] == ["eu-1"]
        await backend.double.start()
        await backend.write(REGIONS, ENDPOINTS, {"eu-a": "ap"})

        async def followed() -> bool:
            return directory.snapshot().home_region("eu-a") == "ap"

        await assert_eventually(followed, timeout_s=CHANGE_SEEN_WITHIN_S)
    finally:
        await directory.stop()
        await backend.double.stop()


async def test_consul_index_going_backwards_is_reset_and_followed(tmp_path):
    backend = ConsulDoubleBackend(tmp_path)
    await backend.double.start()
    directory = await started(backend)
    try:
        backend.double.go_backwards()
        await backend.write(REGIONS, ENDPOINTS, {"eu-b": "ap"})

        async def followed() -> bool:
            return directory.snapshot().home_region("eu-b") == "ap"

        await assert_eventually(followed, timeout_s=CHANGE_SEEN_WITHIN_S)
    finally:
        await directory.stop()
        await backend.double.stop()

"""Test session services: a real PostgreSQL cluster and a real Redis server, started by the
session in private data dirs on free ports and torn down at the end; and a real ledger node
app on loopback per test, talked to over HTTP with signed requests."""

from __future__ import annotations

import os

# The tests read every access line, the ledger's too (it samples 2xx at 1 % by default); set
# before the services' modules build their middlewares.
os.environ.setdefault("REGIONGATE_ACCESS_LOG_SAMPLE_RATIO", "1")

import asyncio
import inspect
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway, build_gateway_app
from gateway.config import GatewayConfig, RateLimitConfig
from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_keys
from infra.local import even_slot_ranges
from infra.services import PostgresCluster, RedisServer, free_port
from region_router.directory import LedgerEndpoint, Region, RegionStatus
from region_router.http_pool import HttpPool
from region_router.ledger_client import LedgerClient
from region_router.yaml_directory import write_directory_file
from tests.support import (
    LIMIT_BURST,
    PROPERTY_SCALE,
    SAGA_TEST_CONFIG,
    SERVICE_KEYS_TEXT,
    AppServer,
    Cluster,
    RegionNode,
    ledger_config,
    migrated_database,
    start_ledger,
    unique,
)
from wire.service_auth import ServiceKeyring


def pytest_collection_modifyitems(config, items) -> None:
    """Every async test runs with loop_errors, so an exception that reaches the event loop's
    handler (a task that died unawaited) fails it. In a deep property run
    (REGIONGATE_PROPERTY_SCALE above 1) every Hypothesis test gets the suite's timeout
    (pyproject.toml) times the scale, as its examples are (support.py)."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            if "loop_errors" not in item.fixturenames:
                item.fixturenames.append("loop_errors")
    if PROPERTY_SCALE == 1:
        return
    timeout_s = float(config.getini("timeout")) * PROPERTY_SCALE
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.timeout(timeout_s))


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="regiongate-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_services_dir(services_dir: Path) -> Path:
    """A directory of its own for a test that starts its own PostgreSQL. Not under tmp_path:
    when the tests run as root, PostgreSQL runs as an unprivileged user that must traverse to
    its data dir, and every new pytest session makes its base temp dir 0700 again, which would
    lock a concurrent session's servers out (seen with two sessions on one machine)."""
    return Path(tempfile.mkdtemp(dir=services_dir))


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(services_dir / "postgres", free_port())
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(services_dir / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ledger_dsn(postgres: PostgresCluster) -> str:
    """The shared ledger database, migrated once; tests use unique accounts and keys in it."""
    return migrated_database(postgres, "ledger_shared")


@pytest.fixture
def fresh_dsn(postgres: PostgresCluster) -> str:
    """A database of its own, for tests whose checks need a ledger nobody else writes to."""
    return postgres.create_database(unique("ledger").replace("-", "_")[:40])


@pytest.fixture(scope="session")
def keyring() -> ServiceKeyring:
    return ServiceKeyring.parse(SERVICE_KEYS_TEXT)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list]:
    """Collects exceptions that reach the event loop's handler; any fails the test."""
    errors: list = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    assert not errors, errors


@pytest.fixture
async def ledger_node(ledger_dsn: str, keyring: ServiceKeyring, loop_errors) -> AsyncIterator:
    node, server = await start_ledger(ledger_config(ledger_dsn), keyring)
    yield node, server
    await server.close()
    await node.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as client_session:
        yield client_session


@pytest.fixture
async def ledger_pool() -> AsyncIterator[HttpPool]:
    """The keep-alive pool the router uses, for signed calls straight to ledger nodes."""
    async with HttpPool(connections_per_origin_max=200) as pool:
        yield pool


@pytest.fixture
async def client(ledger_node, keyring, ledger_pool) -> LedgerClient:
    _, server = ledger_node
    return LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "gateway_limits(**fields): the cluster's gateways' RateLimitConfig fields"
    )
    config.addinivalue_line(
        "markers", "cluster_regions(*codes): the cluster's regions (default eu, us)"
    )
    config.addinivalue_line(
        "markers",
        "lookups_from_view: nodes publish events and keep player views; gateways"
        " answer public username lookups from them",
    )


@pytest.fixture
async def cluster(request, postgres, keyring, redis_server, tmp_path):
    marker = request.node.get_closest_marker("gateway_limits")
    limit_overrides = marker.kwargs if marker is not None else {}
    marker = request.node.get_closest_marker("cluster_regions")
    codes = marker.args if marker is not None else ("eu", "us")
    from_view = request.node.get_closest_marker("lookups_from_view") is not None
    events = (
        {"events": {"redis_url": redis_server.url, "poll_interval_ms": 5,
                    "webhooks": {"enabled": False}}}
        if from_view
        else {}
    )  # fmt: skip
    regions = {}
    directory_file = tmp_path / "directory.yaml"
    for code in codes:
        dsn = postgres.create_database(unique(f"gw_{code}").replace("-", "_")[:40])
        regions[code] = RegionNode(
            code,
            dsn,
            keyring,
            directory_file=str(directory_file),
            saga=SAGA_TEST_CONFIG,
            **events,
        )
    write_directory_file(
        directory_file,
        [Region(code, RegionStatus.ACTIVE, tuple(p for p in codes if p != code)) for code in codes],
        [LedgerEndpoint(code, f"{code}-1", node.url) for code, node in regions.items()],
        {},
        default_region="us",
        slot_ranges=even_slot_ranges(list(codes)),
    )
    for node in regions.values():
        await node.start()
    keys = ensure_dev_keys(tmp_path / "keys")
    service_keys = tmp_path / "service_keys"
    service_keys.write_text(SERVICE_KEYS_TEXT)
    gateways = {}
    limiter_prefix = unique("rl") + ":"
    for code in codes:
        config = GatewayConfig(
            region=code,
            directory_file=str(directory_file),
            jwks_file=str(keys.jwks_file),
            audience=DEV_AUDIENCE,
            issuer=DEV_ISSUER,
            service_keys_file=str(service_keys),
            redis_url=redis_server.url,
            lookups_from_view=from_view,
            attempt_timeout_ms=1000,
            call_timeout_ms=2000,
            rate_limit=RateLimitConfig(
                **{
                    "per_client_rate_per_s": 1,
                    "per_client_burst": LIMIT_BURST,
                    "per_account_rate_per_s": 1000,
                    "per_account_burst": 1000,
                    "key_prefix": limiter_prefix,
                    **limit_overrides,
                }
            ),
        )
        gateways[code] = AppServer(build_gateway_app(Gateway(config)), host="127.0.0.1")
        await gateways[code].start_server()
    async with aiohttp.ClientSession() as session:
        yield Cluster(regions, gateways, session, keys)
    for server in gateways.values():
        await server.close()
    for node in regions.values():
        await node.stop()

"""Helpers shared by the test modules: one place, so every test builds ledgers, signs requests
and waits for conditions the same way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestServer
from hypothesis import settings
from jsonschema import Draft202012Validator

from infra.processes import LedgerProcess, write_ledger_config
from infra.services import free_port
from ledger_node.app import build_app
from ledger_node.audit import check_invariants
from ledger_node.config import LedgerConfig, ledger_config_from_dict
from ledger_node.node import LedgerNode
from region_router.ledger_client import LedgerClient
from runtime.http_problems import protocol_problem
from runtime.serving import ProblemAppRunner

REGION = "eu"
CURRENCIES = [
    {"code": "EUR", "exponent": 2},
    {"code": "USD", "exponent": 2},
    {"code": "GCOIN", "exponent": 0},
]
HOUSE = f"{REGION}-house-EUR"
CLEARING = f"{REGION}-clearing-EUR"


# Property tests run REGIONGATE_PROPERTY_SCALE times their examples (default 1, at most 1000),
# and their timeout scales with them (conftest.py): for a deep run before a release,
# REGIONGATE_PROPERTY_SCALE=40 ./dev test tests/test_properties.py tests/test_saga_rules.py
PROPERTY_SCALE_MAX = 1000
PROPERTY_SCALE = int(os.environ.get("REGIONGATE_PROPERTY_SCALE", "1"))
if not 1 <= PROPERTY_SCALE <= PROPERTY_SCALE_MAX:
    raise ValueError(f"REGIONGATE_PROPERTY_SCALE must be in [1, {PROPERTY_SCALE_MAX}]")


def property_settings(examples: int, **options) -> settings:
    """Hypothesis settings for a property over real services: examples times the scale, and no
    per-example deadline (a PostgreSQL round trip's time is the machine's, not the property's)."""
    return settings(max_examples=examples * PROPERTY_SCALE, deadline=None, **options)


def ledger_config(dsn: str, region: str = REGION, **overrides) -> LedgerConfig:
    raw = {
        "region": region,
        "peers": [peer for peer in ("eu", "us", "ap") if peer != region],
        "port": 0,
        "database": {"dsn": dsn},
        "currencies": CURRENCIES,
        "expiry_interval_ms": 100,
    }
    raw.update(overrides)
    return ledger_config_from_dict(raw)


@contextlib.contextmanager
def region_status(directory_file, code: str, status: str):
    """A region marked with status in a YAML directory file for the block, then restored. Each
    write replaces the file whole, as the directory's reader expects."""
    import os

    import yaml

    path = Path(directory_file)
    original = path.read_text()
    records = yaml.safe_load(original)
    for region in records["regions"]:
        if region["code"] == code:
            region["status"] = status
    staged = path.with_suffix(".staged")
    staged.write_text(yaml.safe_dump(records))
    os.replace(staged, path)
    try:
        yield
    finally:
        staged.write_text(original)
        os.replace(staged, path)


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def assert_eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.05
) -> None:
    """Poll condition until it holds; fail after timeout_s. Tests never sleep for a fixed time."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition did not hold within {timeout_s}s")
        await asyncio.sleep(interval_s)


async def new_player(client: LedgerClient, currency: str = "EUR") -> str:
    response = await client.post(
        "/v1/accounts", {"currency": currency}, idempotency_key=unique("acct")
    )
    assert response.status == 201, response.body
    return response.json()["id"]


async def fund(client: LedgerClient, account_id: str, amount: int, currency: str = "EUR") -> None:
    response = await client.post(
        "/v1/transfers",
        {
            "debit_account_id": f"{account_id.split('-', 1)[0]}-clearing-{currency}",
            "credit_account_id": account_id,
            "amount": amount,
            "currency": currency,
        },
        idempotency_key=unique("fund"),
    )
    assert response.status == 201, response.body


async def balance(client: LedgerClient, account_id: str) -> dict:
    response = await client.get(f"/v1/accounts/{account_id}/balance")
    assert response.status == 200, response.body
    return response.json()


async def assert_ledger_invariants(dsn: str) -> None:
    """Read the ledger back and check every invariant (assertions in pairs: the batcher checked
    before commit, this checks what was committed)."""
    connection = await asyncpg.connect(dsn)
    try:
        results = await check_invariants(connection)
    finally:
        await connection.close()
    failures = {r.name: r.violations[:5] for r in results if not r.ok}
    assert not failures, failures


def migrated_database(postgres, name: str) -> str:
    """Create database name in the session's cluster (if missing), migrate it, return its DSN."""
    from ledger_node.migrations import apply_migrations

    dsn = postgres.create_database(name)

    async def migrate() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await apply_migrations(connection)
        finally:
            await connection.close()

    asyncio.run(migrate())
    return dsn


async def ledger_snapshot(dsn: str) -> tuple:
    """Counts and account versions, to prove that a refused request wrote nothing."""
    connection = await asyncpg.connect(dsn)
    try:
        transfers = await connection.fetchval("SELECT count(*) FROM transfers")
        keys = await connection.fetchval("SELECT count(*) FROM idempotency_keys")
        accounts = await connection.fetch("SELECT id, version FROM accounts ORDER BY id")
        bets = await connection.fetchval("SELECT count(*) FROM bets")
    finally:
        await connection.close()
    return transfers, keys, bets, [tuple(a) for a in accounts]


class AppServer(TestServer):
    """A test server on the services' own runner, so that tests meet the same answers to
    unparseable requests (problem+json) that served processes give."""

    async def _make_runner(self, **kwargs) -> ProblemAppRunner:
        return ProblemAppRunner(self.app, protocol_problem=protocol_problem, **kwargs)


SERVICE_KEYS_TEXT = (
    "test-1: " + "a1" * 32 + "\ntest-old: " + "b2" * 32 + "\ntest-peer: " + "c3" * 32 + "\n"
)
PEER_KEY_ID = "test-peer"  # what ledgers sign saga steps with


def ledger_process(tmp_path: Path, dsn: str, extra: dict | None = None) -> LedgerProcess:
    """A ledger node of region eu in its own process (not started), on a free port, its
    config, service keys and log under tmp_path; extra is merged into its config."""
    keys = tmp_path / "service_keys"
    keys.write_text(SERVICE_KEYS_TEXT)
    keys.chmod(0o600)
    port = free_port()
    config = write_ledger_config(
        tmp_path / "ledger.yaml",
        region="eu",
        dsn=dsn,
        port=port,
        service_keys_file=keys,
        extra=extra,
    )
    return LedgerProcess(config, port, tmp_path / "ledger.log")


async def start_ledger(config, keyring) -> tuple[LedgerNode, AppServer]:
    """A ledger node in this process, served on loopback."""
    node = LedgerNode(config, keyring)
    await node.start()
    server = AppServer(build_app(node, manage_node=False), host="127.0.0.1")
    await server.start_server()
    return node, server


class RegionNode:
    """A ledger node of one region, startable again on the same port."""

    def __init__(self, region: str, dsn: str, keyring, **overrides) -> None:
        self.region = region
        self.dsn = dsn
        self.keyring = keyring
        self.overrides = overrides
        self.port = free_port()
        self.node = None
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        config = ledger_config(self.dsn, region=self.region, **self.overrides)
        self.node = LedgerNode(config, self.keyring)
        await self.node.start()
        self.server = AppServer(
            build_app(self.node, manage_node=False), host="127.0.0.1", port=self.port
        )
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            await self.node.stop()
            self.server = None


LIMIT_BURST = 120  # the test cluster's per-client burst; more than any other test sends


class OpenApiContract:
    """Checks an answer against the OpenAPI document the gateway serves: its path and method
    are an operation there, its status is one of the operation's responses (or its default),
    its content type is one that response lists, and its body validates against the schema."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.operations = []
        for template, methods in document["paths"].items():
            pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
            for method, operation in methods.items():
                self.operations.append((re.compile(f"^{pattern}$"), method.upper(), operation))

    def check(self, method: str, path: str, status: int, content_type: str, body) -> None:
        path = path.split("?", 1)[0]
        found = [op for pattern, m, op in self.operations if m == method and pattern.match(path)]
        if not found:
            return  # not a documented route: answered by the router's 404 or 405
        responses = found[0]["responses"]
        response = responses.get(str(status), responses.get("default"))
        assert response is not None, f"{method} {path}: {status} is not documented"
        if "$ref" in response:
            response = self.document["components"]["responses"][response["$ref"].split("/")[-1]]
        media = response.get("content", {})
        if not media:
            return
        kind = content_type.split(";")[0].strip()
        assert kind in media, f"{method} {path} {status}: {kind} not in {sorted(media)}"
        # The document's components travel with the schema, so that its $refs resolve.
        schema = {**media[kind]["schema"], "components": self.document["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(body)]
        assert not errors, f"{method} {path} {status}: {errors}"


class Cluster:
    """Regions (eu and us, unless the test's cluster_regions marker names others), each a real
    ledger node and a gateway, for end-to-end tests."""

    def __init__(self, regions, gateways, session, keys) -> None:
        self.regions = regions
        self.gateways = gateways
        self.session = session
        self.keys = keys
        self.admin = keys.mint("backoffice", "admin")
        self.contract: OpenApiContract | None = None
        """Every answer a test sees is checked against the served OpenAPI (issue 24, item 5)."""

    async def call(
        self, region, method, path, *, token=None, body=None, key=None, headers=None
    ) -> tuple[int, dict, dict]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            all_headers["Idempotency-Key"] = key
        url = self.gateways[region].make_url(path)
        if self.contract is None:
            async with self.session.get(self.gateways[region].make_url("/v1/openapi.json")) as r:
                assert r.status == 200, await r.text()
                self.contract = OpenApiContract(await r.json())
        async with self.session.request(
            method, url, json=body, headers=all_headers, allow_redirects=False
        ) as response:
            payload = await response.json(content_type=None)
            self.contract.check(
                method, path, response.status, response.headers.get("Content-Type", ""), payload
            )
            return response.status, dict(response.headers), payload

    async def audit(self, grace_s: float = 10.0) -> dict:
        """Every cross-region check (money and identity); the failures, by check name."""
        from ledger_node.global_audit import audit_regions

        dsns = {code: node.dsn for code, node in self.regions.items()}
        results = await audit_regions(dsns, grace_s=grace_s)
        return {r.name: r.violations[:5] for r in results if not r.ok}

    async def transfer(
        self, gateway: str, debit: str, credit: str, amount: int, *, token=None, key=None
    ) -> tuple[int, dict, dict]:
        """POST /v1/transfers in EUR through a gateway (as the admin unless a token is given)."""
        return await self.call(
            gateway,
            "POST",
            "/v1/transfers",
            token=token or self.admin,
            key=key or unique(),
            body={
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": amount,
                "currency": "EUR",
            },
        )

    async def account(self, region: str, operator: str = "op-1", fund: int = 0) -> str:
        status, _, account = await self.call(
            region,
            "POST",
            "/v1/accounts",
            token=self.admin,
            key=unique(),
            body={"currency": "EUR", "region": region, "operator": operator},
        )
        assert status == 201, account
        if fund:
            deposit = await self.transfer(region, f"{region}-clearing-EUR", account["id"], fund)
            assert deposit[0] == 201, deposit
        return account["id"]


OUTSIDER = "zz"

# Saga tests run fast clocks: a deadline of 1.5 s, short leases, quick recovery passes.
SAGA_TEST_CONFIG = {
    "deadline_ms": 1_500,
    "step_timeout_ms": 400,
    "retry_backoff_base_ms": 20,
    "retry_backoff_cap_ms": 200,
    "lease_ms": 1_000,
    "recovery_interval_ms": 100,
    "wait_ms": 3_000,
}


# Identity's claims on the same fast clocks, with the shortest reservation lease the config
# allows, so that an owner asks a crashed home about its reservations within the test.
IDENTITY_TEST_CONFIG = {
    "claim": {**SAGA_TEST_CONFIG, "deadline_ms": 600_000},
    "reservation_lease_ms": 1_000,
    "reaper_interval_ms": 100,
}


def node_ready(client):
    """For assert_eventually: the node behind a signed client answers ready (past the pool's
    connections to a process that was killed)."""
    from region_router.http_pool import UpstreamConnectionError

    async def check() -> bool:
        try:
            return (await client.get("/health/ready")).status == 200
        except (UpstreamConnectionError, TimeoutError):
            return False

    return check


def process_dead(world, region: str):
    """For assert_eventually: the world's ledger process of a region has exited."""

    async def check() -> bool:
        return not world.ledgers[region].alive()

    return check


class SagaWorld:
    """Regions as separate ledger processes (so a test can kill -9 one), each reaching the
    others' ledgers only through a WAN link it can delay or cut. Each region sees the others
    through its own directory file, as each region's Consul datacenter would."""

    def __init__(self, root, postgres, keys_text: str, regions=("eu", "us", "ap"), **options):
        self.root = root
        self.postgres = postgres
        self.keys_text = keys_text
        self.regions = tuple(regions)
        self.saga = {**SAGA_TEST_CONFIG, **options.pop("saga", {})}
        self.identity = {**IDENTITY_TEST_CONFIG, **options.pop("identity", {})}
        self.own_postgres = options.pop("own_postgres", False)
        self.one_way_delay_ms = options.pop("one_way_delay_ms", 0)
        self.events = options.pop("events", None)
        self.clusters: dict = {}
        self.dsns: dict[str, str] = {}
        self.ledgers: dict = {}
        self.wan = None

    def start(self) -> None:
        from infra.local import even_slot_ranges
        from infra.processes import LedgerProcess, write_ledger_config
        from infra.services import PostgresCluster
        from infra.wan import WanThread
        from region_router.directory import LedgerEndpoint, Region, RegionStatus
        from region_router.yaml_directory import write_directory_file

        self.root.mkdir(parents=True, exist_ok=True)
        keys_file = self.root / "service_keys"
        keys_file.write_text(self.keys_text)
        ports = {region: free_port() for region in self.regions}
        self.wan = WanThread()
        self.wan.start()
        for region in self.regions:
            for peer in self.regions:
                if peer != region:
                    self.wan.add(
                        f"{region}>{peer}",
                        "127.0.0.1",
                        ports[peer],
                        one_way_delay_ms=self.one_way_delay_ms,
                    )
        for region in self.regions:
            if self.own_postgres:
                cluster = PostgresCluster(self.root / f"pg-{region}", free_port())
                cluster.start()
                self.clusters[region] = cluster
                self.dsns[region] = cluster.create_database(f"ledger_{region}")
            else:
                name = unique(f"saga_{region}").replace("-", "_")[:40]
                self.dsns[region] = self.postgres.create_database(name)
            # OUTSIDER is a peer with no ledger here: tests that fabricate another region's saga
            # steps use it, so the audit of this world (its regions only) stays exact.
            peers = [peer for peer in self.regions if peer != region] + [OUTSIDER]
            directory = self.root / f"directory-{region}.yaml"
            write_directory_file(
                directory,
                [
                    Region(code, RegionStatus.ACTIVE, tuple(p for p in self.regions if p != code))
                    for code in self.regions
                ],
                [
                    LedgerEndpoint(
                        code,
                        f"{code}-1",
                        f"http://127.0.0.1:{ports[code]}"
                        if code == region
                        else self.wan.links[f"{region}>{code}"].url,
                    )
                    for code in self.regions
                ],
                {},
                slot_ranges=even_slot_ranges(list(self.regions)),
            )
            config = write_ledger_config(
                self.root / f"ledger-{region}.yaml",
                region=region,
                dsn=self.dsns[region],
                port=ports[region],
                service_keys_file=keys_file,
                peers=peers,
                extra={
                    "directory_file": str(directory),
                    "saga": self.saga,
                    "identity": self.identity,
                    "expiry_interval_ms": 100,
                    "request_timeout_ms": 5_000,
                    "peer_key_ids": ["test-peer"],
                    **({"events": self.events} if self.events else {}),
                },
            )
            self.ledgers[region] = LedgerProcess(
                config, ports[region], self.root / f"ledger-{region}.log"
            )
        for ledger in self.ledgers.values():
            ledger.start()

    def url(self, region: str) -> str:
        return self.ledgers[region].url

    def link(self, source: str, destination: str, action: str, *args) -> None:
        """cut / heal / drop_connections / set_delay, on both directions between two regions."""
        for name in (f"{source}>{destination}", f"{destination}>{source}"):
            self.wan.call(name, action, *args)

    def kill(self, region: str) -> None:
        self.ledgers[region].kill()

    def restart(self, region: str, env: dict[str, str] | None = None) -> None:
        self.ledgers[region].start(env=env)

    def stop(self) -> None:
        for ledger in self.ledgers.values():
            ledger.stop()
        if self.wan is not None:
            self.wan.stop()
        for cluster in self.clusters.values():
            cluster.stop(mode="immediate")

    async def audit(self, grace_s: float = 10.0) -> dict:
        """Every cross-region check; the failures, by check name (empty when all pass)."""
        from ledger_node.global_audit import audit_regions

        results = await audit_regions(self.dsns, grace_s=grace_s)
        return {r.name: r.violations[:5] for r in results if not r.ok}

    def clients(self, key, pool) -> dict:
        """A signed ledger client per region, straight to its node (not through a WAN link)."""
        from region_router.ledger_client import LedgerClient

        return {region: LedgerClient(self.url(region), key, pool) for region in self.regions}

    async def unfinished_sagas(self) -> int:
        count = 0
        for dsn in self.dsns.values():
            connection = await asyncpg.connect(dsn)
            try:
                count += await connection.fetchval(
                    "SELECT count(*) FROM sagas WHERE status = 'held'"
                )
            finally:
                await connection.close()
        return count

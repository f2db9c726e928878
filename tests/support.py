"""Helpers shared by the test modules: one place, so every test builds ledgers, signs requests
and waits for conditions the same way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp.test_utils import TestServer

from infra.services import free_port
from ledger_node.app import build_app
from ledger_node.audit import check_invariants
from ledger_node.config import LedgerConfig, ledger_config_from_dict
from ledger_node.node import LedgerNode
from region_router.ledger_client import LedgerClient

REGION = "eu"
CURRENCIES = [
    {"code": "EUR", "exponent": 2},
    {"code": "USD", "exponent": 2},
    {"code": "GCOIN", "exponent": 0},
]
HOUSE = f"{REGION}-house-EUR"
CLEARING = f"{REGION}-clearing-EUR"


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
            "debit_account_id": f"{REGION}-clearing-{currency}",
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


class RegionNode:
    """A ledger node of one region, startable again on the same port."""

    def __init__(self, region: str, dsn: str, keyring) -> None:
        self.region = region
        self.dsn = dsn
        self.keyring = keyring
        self.port = free_port()
        self.node = None
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.node = LedgerNode(ledger_config(self.dsn, region=self.region), self.keyring)
        await self.node.start()
        self.server = TestServer(
            build_app(self.node, manage_node=False), host="127.0.0.1", port=self.port
        )
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            await self.node.stop()
            self.server = None


LIMIT_BURST = 120  # the test cluster's per-client burst; more than any other test sends


class Cluster:
    """Two regions (eu, us), each a real ledger node and a gateway, for end-to-end tests."""

    def __init__(self, regions, gateways, session, keys) -> None:
        self.regions = regions
        self.gateways = gateways
        self.session = session
        self.keys = keys
        self.admin = keys.mint("backoffice", "admin")

    async def call(
        self, region, method, path, *, token=None, body=None, key=None, headers=None
    ) -> tuple[int, dict, dict]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            all_headers["Idempotency-Key"] = key
        url = self.gateways[region].make_url(path)
        async with self.session.request(method, url, json=body, headers=all_headers) as response:
            payload = await response.json(content_type=None)
            return response.status, dict(response.headers), payload

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
            status, _, _ = await self.call(
                region,
                "POST",
                "/v1/transfers",
                token=self.admin,
                key=unique(),
                body={
                    "debit_account_id": f"{region}-clearing-EUR",
                    "credit_account_id": account["id"],
                    "amount": fund,
                    "currency": "EUR",
                },
            )
            assert status == 201
        return account["id"]

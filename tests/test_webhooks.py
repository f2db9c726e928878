"""Webhooks end to end: a ledger node with its relay and webhook dispatcher, a durable Redis,
and an https receiver on 127.0.0.1 that this test starts (its certificate from a CA the node
is told to trust). Deliveries are signed per Standard Webhooks (checked with the convention's
own library), retried, kept in per-account order, never redirected, replayable; an endpoint
that only fails is disabled with an event."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import defaultdict

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks import Webhook

from events.streams import from_fields, stream_name
from infra.services import RedisServer, free_port
from infra.tls import ensure_dev_certificates
from region_router.ledger_client import LedgerClient
from tests.support import fund, ledger_config, new_player, start_ledger, unique


class Receiver:
    """An https endpoint that records what it accepts, and answers as told."""

    def __init__(self, tls) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.attempts = 0
        self.fail_amount: int | None = None
        """Answer 500 to the event of a transfer of this amount, failures_left times."""
        self.failures_left = 0
        self.answer_status: int | None = None
        self.port = free_port()
        self._tls = tls
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.answer_status is not None:
            return web.Response(
                status=self.answer_status, headers={"Location": "https://elsewhere.example/"}
            )
        amount = json.loads(body)["data"].get("amount")
        if amount is not None and amount == self.fail_amount and self.failures_left > 0:
            self.failures_left -= 1
            return web.Response(status=500)
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._tls.cert, self._tls.key)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self, prefix: str = "") -> list[dict]:
        found = [json.loads(body) for _, body in self.received]
        return [e for e in found if e["type"].startswith(prefix)]


@pytest.fixture
async def webhook_world(fresh_dsn, keyring, ledger_pool, tmp_path):
    # A Redis of each test's own: nothing of an earlier test's node can read this one's streams.
    events_redis = RedisServer(tmp_path / "redis", free_port(), durable=True)
    events_redis.start()
    tls = ensure_dev_certificates(tmp_path / "tls")
    receiver = Receiver(tls)
    await receiver.start()
    config = ledger_config(
        fresh_dsn,
        events={
            "redis_url": events_redis.url,
            "poll_interval_ms": 5,
            "webhooks": {
                "ca_file": str(tls.ca_cert),
                "allow_private_addresses": True,  # the receiver is on 127.0.0.1
                "retry_schedule_s": [1, 1, 1, 1, 1],
                "disable_after_s": 2,
                "poll_interval_ms": 20,
            },
        },
    )
    node, server = await start_ledger(config, keyring)
    client = LedgerClient(str(server.make_url("")), keyring.signing_key, ledger_pool)
    redis_client = aioredis.from_url(events_redis.url)
    yield client, receiver, redis_client
    await redis_client.aclose()
    await server.close()
    await node.stop()
    await receiver.stop()
    events_redis.stop()


async def _register(client, url: str, types: list[str]) -> dict:
    response = await client.post("/v1/webhook-endpoints", {"url": url, "event_types": types})
    assert response.status == 201, response.body
    return response.json()


async def _eventually(check, timeout_s: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _transfer(client, debit: str, credit: str, amount: int) -> str:
    response = await client.post(
        "/v1/transfers",
        {"debit_account_id": debit, "credit_account_id": credit, "amount": amount,
         "currency": "EUR"},
        idempotency_key=unique("t"),
    )  # fmt: skip
    assert response.status == 201, response.body
    return response.json()["id"]


async def test_deliveries_are_signed_complete_and_in_account_order(webhook_world):
    client, receiver, _ = webhook_world
    endpoint = await _register(client, receiver.url, ["transfer.*", "account.created"])
    assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "enabled"
    alice, bob = await new_player(client), await new_player(client)
    await fund(client, alice, 10_000)
    await fund(client, bob, 10_000)
    for amount in range(1, 21):
        await _transfer(client, *((alice, bob) if amount % 2 else (bob, alice)), amount)
    await _eventually(lambda: len(receiver.events("transfer.")) >= 22)
    verifier = Webhook(endpoint["secret"])
    for headers, body in receiver.received:
        verifier.verify(body, headers)  # raises on a bad signature
    events = receiver.events()
    transfer_ids = [e["data"]["transfer_id"] for e in events if e["type"].startswith("transfer.")]
    assert len(transfer_ids) == len(set(transfer_ids)) == 22
    assert {e["aggregate_id"] for e in events if e["type"] == "account.created"} == {alice, bob}
    versions = defaultdict(list)
    for event in receiver.events("transfer."):
        for side in ("debit", "credit"):
            versions[event["data"][f"{side}_account_id"]].append(
                event["data"][f"{side}_balance_after"]["version"]
            )
    for account in (alice, bob):
        assert versions[account] == sorted(versions[account])


async def test_a_failing_delivery_holds_back_the_accounts_later_events(webhook_world):
    client, receiver, _ = webhook_world
    alice, bob = await new_player(client), await new_player(client)
    await fund(client, alice, 1_000)
    await _register(client, receiver.url, ["transfer.posted"])
    receiver.fail_amount, receiver.failures_left = 1, 2
    ids = [await _transfer(client, alice, bob, amount) for amount in (1, 2, 3)]

    def delivered() -> list[str]:
        return [
            e["data"]["transfer_id"] for e in receiver.events() if e["data"]["transfer_id"] in ids
        ]

    await _eventually(lambda: len(delivered()) >= 3)
    # The first was refused twice and retried a second apart; the two after it waited. (The
    # funding's event may come too: the endpoint existed before the relay read it.)
    assert delivered() == ids
    assert receiver.failures_left == 0


async def test_rotation_replay_redirects_and_disabling(webhook_world):
    client, receiver, redis_client = webhook_world
    refused = await client.post(
        "/v1/webhook-endpoints", {"url": "http://127.0.0.1/hooks", "event_types": ["*"]}
    )
    assert refused.status == 400 and refused.json()["field"] == "url"
    refused = await client.post(
        "/v1/webhook-endpoints", {"url": receiver.url, "event_types": ["nonsense.happened"]}
    )
    assert refused.status == 400 and refused.json()["field"] == "event_types"
    endpoint = await _register(client, receiver.url, ["transfer.posted"])
    alice, bob = await new_player(client), await new_player(client)
    await fund(client, alice, 1_000)
    rotated = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
    assert rotated.status == 200
    new_secret = rotated.json()["secret"]
    await _transfer(client, alice, bob, 7)
    await _eventually(lambda: any(e["data"]["amount"] == 7 for e in receiver.events()))
    headers, body = receiver.received[-1]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new_secret).verify(body, headers)
    Webhook(endpoint["secret"]).verify(body, headers)  # the previous one, during the rotation
    # A replay from the start delivers every event again, under the same webhook-id.
    before = len(receiver.received)
    replay = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/replay", {"from": "0-0"})
    assert replay.status == 200 and replay.json()["replayed"] >= 2
    await _eventually(lambda: len(receiver.received) >= before + replay.json()["replayed"])
    ids = [h["webhook-id"] for h, _ in receiver.received]
    assert len(set(ids)) < len(ids)
    # An endpoint that answers only redirects: never followed, retried, then disabled.
    receiver.answer_status = 302
    received = len(receiver.received)
    await _transfer(client, alice, bob, 8)
    disabled = None
    for _ in range(200):
        answer = await client.get(f"/v1/webhook-endpoints/{endpoint['id']}")
        if answer.json()["status"] == "disabled":
            disabled = answer.json()
            break
        await asyncio.sleep(0.05)
    assert disabled is not None, "the endpoint was disabled after failing for 2 s"
    assert "HTTP 302" in disabled["disabled_reason"] and len(receiver.received) == received
    for _ in range(100):
        entries = await redis_client.xrange(stream_name("eu", "webhook"), "-", "+")
        if entries:
            break
        await asyncio.sleep(0.05)
    event = from_fields(entries[-1][1])
    assert event.type == "webhook.endpoint_disabled"
    assert event.data["endpoint_id"] == endpoint["id"]
    # Enabled again, the waiting delivery goes out.
    receiver.answer_status = None
    enabled = await client.post(f"/v1/webhook-endpoints/{endpoint['id']}/enable")
    assert enabled.status == 200 and enabled.json()["status"] == "enabled"
    await _eventually(lambda: any(e["data"]["amount"] == 8 for e in receiver.events()))

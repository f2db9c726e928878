"""Bad input gets a 4xx application/problem+json answer with a stable type, and writes nothing:
each case snapshots the ledger (transfer, key and bet counts, every account's version) before
and after, and the two must be equal."""

from __future__ import annotations

import pytest

from region_router.ledger_client import LedgerClient
from tests.support import CLEARING, HOUSE, ledger_snapshot, unique
from wire.service_auth import ServiceKey

P = "urn:regiongate:problem:"
PLAYER = "eu-badinputplayer"


def body(**changes) -> dict:
    base = {
        "debit_account_id": CLEARING,
        "credit_account_id": HOUSE,
        "amount": 100,
        "currency": "EUR",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


# (case, path, body or raw bytes, idempotency key, status, problem slug, field)
CASES = [
    ("malformed json", "/v1/transfers", b'{"amount": ', "k", 400, "malformed-json", None),
    ("not an object", "/v1/transfers", b"[1, 2]", "k", 400, "validation-failed", None),
    ("zero amount", "/v1/transfers", body(amount=0), "k", 400, "validation-failed", "amount"),
    ("negative amount", "/v1/transfers", body(amount=-5), "k", 400, "validation-failed", "amount"),
    (
        "float amount",
        "/v1/transfers",
        b'{"debit_account_id": "eu-clearing-EUR", '
        b'"credit_account_id": "eu-house-EUR", "amount": 1.5, "currency": "EUR"}',
        "k",
        400,
        "validation-failed",
        "amount",
    ),
    (
        "integral float amount",
        "/v1/transfers",
        b'{"debit_account_id": "eu-clearing-EUR", '
        b'"credit_account_id": "eu-house-EUR", "amount": 100.0, "currency": "EUR"}',
        "k",
        400,
        "validation-failed",
        "amount",
    ),
    ("string amount", "/v1/transfers", body(amount="100"), "k", 400, "validation-failed", "amount"),
    ("boolean amount", "/v1/transfers", body(amount=True), "k", 400, "validation-failed", "amount"),
    (
        "oversized amount",
        "/v1/transfers",
        body(amount=10**15 + 1),
        "k",
        400,
        "validation-failed",
        "amount",
    ),
    ("huge integer", "/v1/transfers", body(amount=10**40), "k", 400, "validation-failed", "amount"),
    ("missing amount", "/v1/transfers", body(amount=...), "k", 400, "validation-failed", None),
    ("unknown field", "/v1/transfers", body(fee=1), "k", 400, "validation-failed", None),
    (
        "unknown currency",
        "/v1/transfers",
        body(currency="XYZ"),
        "k",
        422,
        "unknown-currency",
        "currency",
    ),
    (
        "lower-case currency",
        "/v1/transfers",
        body(currency="eur"),
        "k",
        400,
        "validation-failed",
        "currency",
    ),
    (
        "currency mismatch",
        "/v1/transfers",
        body(credit_account_id="eu-house-USD"),
        "k",
        422,
        "currency-mismatch",
        "currency",
    ),
    (
        "unknown debit account",
        "/v1/transfers",
        body(debit_account_id="eu-nobody"),
        "k",
        404,
        "account-not-found",
        "debit_account_id",
    ),
    (
        "unknown credit account",
        "/v1/transfers",
        body(credit_account_id="eu-nobody"),
        "k",
        404,
        "account-not-found",
        "credit_account_id",
    ),
    (
        "account of another region",
        "/v1/transfers",
        body(credit_account_id="us-house-EUR"),
        "k",
        421,
        "account-not-in-region",
        "credit_account_id",
    ),
    (
        "malformed account id",
        "/v1/transfers",
        body(debit_account_id="../etc"),
        "k",
        400,
        "validation-failed",
        "debit_account_id",
    ),
    (
        "same account twice",
        "/v1/transfers",
        body(credit_account_id=CLEARING),
        "k",
        422,
        "accounts-must-be-different",
        "credit_account_id",
    ),
    (
        "pending without timeout",
        "/v1/transfers",
        body(pending=True),
        "k",
        400,
        "validation-failed",
        "timeout_s",
    ),
    (
        "timeout on a posted transfer",
        "/v1/transfers",
        body(timeout_s=5),
        "k",
        400,
        "validation-failed",
        "timeout_s",
    ),
    (
        "timeout beyond the maximum",
        "/v1/transfers",
        body(pending=True, timeout_s=10**8),
        "k",
        400,
        "validation-failed",
        "timeout_s",
    ),
    (
        "metadata too large",
        "/v1/transfers",
        body(metadata={f"k{i}": "v" for i in range(17)}),
        "k",
        400,
        "validation-failed",
        "metadata",
    ),
    (
        "body over the size limit",
        "/v1/transfers",
        b'{"x": "' + b"a" * 20_000 + b'"}',
        "k",
        413,
        "body-too-large",
        None,
    ),
    (
        "missing idempotency key",
        "/v1/transfers",
        body(),
        None,
        400,
        "idempotency-key-missing",
        "Idempotency-Key",
    ),
    (
        "malformed idempotency key",
        "/v1/transfers",
        body(),
        "a b",
        400,
        "idempotency-key-invalid",
        "Idempotency-Key",
    ),
    (
        "overlong idempotency key",
        "/v1/transfers",
        body(),
        "k" * 129,
        400,
        "idempotency-key-invalid",
        "Idempotency-Key",
    ),
    (
        "post of an unknown transfer",
        "/v1/transfers/eu-t-nothing/post",
        b"",
        "k",
        404,
        "transfer-not-found",
        "transfer_id",
    ),
    (
        "post of a plain transfer amount 0",
        "/v1/transfers/eu-t-nothing/post",
        {"amount": 0},
        "k",
        400,
        "validation-failed",
        "amount",
    ),
    (
        "bet on an unknown account",
        "/v1/bets",
        {"account_id": "eu-nobody", "amount": 5, "currency": "EUR", "reference": "r"},
        "k",
        404,
        "account-not-found",
        "account_id",
    ),
    (
        "win for an unknown account",
        "/v1/wins",
        {"account_id": "eu-nobody", "amount": 5, "currency": "EUR", "reference": "r"},
        "k",
        404,
        "account-not-found",
        "account_id",
    ),
    (
        "bet without reference",
        "/v1/bets",
        {"account_id": PLAYER, "amount": 5, "currency": "EUR"},
        "k",
        400,
        "validation-failed",
        None,
    ),
    (
        "rollback for an unknown account",
        "/v1/rollbacks",
        {"account_id": "eu-nobody", "reference": "r"},
        "k",
        404,
        "account-not-found",
        "account_id",
    ),
    (
        "account with unknown currency",
        "/v1/accounts",
        {"currency": "XYZ"},
        "k",
        422,
        "unknown-currency",
        "currency",
    ),
    (
        "account without key",
        "/v1/accounts",
        {"currency": "EUR"},
        None,
        400,
        "idempotency-key-missing",
        "Idempotency-Key",
    ),
]


@pytest.mark.parametrize(
    ("path", "payload", "key", "status", "slug", "field"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_input_is_refused_and_writes_nothing(
    client, ledger_dsn, path, payload, key, status, slug, field
):
    before = await ledger_snapshot(ledger_dsn)
    raw = payload if isinstance(payload, bytes) else None
    response = await client.post(
        path,
        None if raw is not None else payload,
        raw_body=raw,
        idempotency_key=None if key is None else (key if key != "k" else unique()),
    )
    assert response.status == status, response.body
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == P + slug
    assert problem["status"] == status
    assert problem.get("field") == field
    assert "Traceback" not in response.body.decode()
    # Business refusals are remembered under their key (so a retry gets the same answer); apart
    # from that key, nothing may change.
    after = await ledger_snapshot(ledger_dsn)
    assert (after[0], after[2], after[3]) == (before[0], before[2], before[3])
    assert after[1] - before[1] in (0, 1)


async def _signed(ledger_node, ledger_pool, key: ServiceKey | None, tamper=None):
    _, server = ledger_node
    client = LedgerClient(str(server.make_url("")), key or ServiceKey("x", b"0" * 32), ledger_pool)
    headers = {}
    if key is None:
        headers = {"X-RG-Key-Id": "", "X-RG-Signature": ""}
    if tamper == "timestamp":
        headers = {"X-RG-Timestamp": "1000000000"}
    if tamper == "signature":
        headers = {"X-RG-Signature": "0" * 64}
    return await client.post("/v1/transfers", body(), idempotency_key=unique(), headers=headers)


@pytest.mark.parametrize(
    "credential", ["missing", "unknown key", "wrong secret", "stale timestamp", "bad signature"]
)
async def test_bad_service_credentials_get_401(
    ledger_node, ledger_pool, keyring, ledger_dsn, credential
):
    before = await ledger_snapshot(ledger_dsn)
    real = keyring.signing_key
    key, tamper = {
        "missing": (None, None),
        "unknown key": (ServiceKey("nobody", b"1" * 32), None),
        "wrong secret": (ServiceKey(real.key_id, b"2" * 32), None),
        "stale timestamp": (real, "timestamp"),
        "bad signature": (real, "signature"),
    }[credential]
    response = await _signed(ledger_node, ledger_pool, key, tamper)
    assert response.status == 401
    assert response.json()["type"] == P + "unauthenticated"
    assert await ledger_snapshot(ledger_dsn) == before


async def test_anonymous_read_is_refused(ledger_node, session):
    _, server = ledger_node
    async with session.get(server.make_url("/v1/accounts/eu-house-EUR/balance")) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"


async def test_a_rotated_in_key_is_accepted(ledger_node, ledger_pool, keyring):
    """Rotation: a second key in the keyring signs requests that are accepted too."""
    _, server = ledger_node
    old = keyring.get("test-old")
    client = LedgerClient(str(server.make_url("")), old, ledger_pool)
    assert (await client.get("/v1/accounts/eu-house-EUR")).status == 200


async def test_unknown_route_is_a_problem(client):
    response = await client.get("/v1/nothing-here")
    assert response.status == 404
    assert response.json()["type"] == P + "not-found"


@pytest.mark.parametrize(
    ("case", "request_bytes", "status", "slug"),
    [
        (
            "a header past the parser's limit",
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "headers-too-large",
        ),
        ("a broken request line", b"GARBAGE\r\n\r\n", 400, "malformed-request"),
        (
            "a header line without a colon",
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n",
            400,
            "malformed-request",
        ),
    ],
)
async def test_a_request_the_parser_refuses_is_a_problem(
    ledger_node, ledger_dsn, case, request_bytes, status, slug
):
    """Below the app, at the HTTP parser: still problem+json, never aiohttp's text/plain."""
    import asyncio
    import json

    _, server = ledger_node
    before = await ledger_snapshot(ledger_dsn)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), (case, head)
    assert b"Content-Type: application/problem+json" in head, (case, head)
    assert json.loads(payload)["type"] == P + slug, (case, payload)
    assert await ledger_snapshot(ledger_dsn) == before

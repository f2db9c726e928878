"""Property-based tests of the ledger's rules against a reference model.

Hypothesis draws sequences of groups of operations (transfers, holds, posts, voids, bets, wins,
rollbacks, and replays of earlier requests) over a few fresh player accounts and the house and
clearing accounts. Each group is submitted to the node's batcher with no await in between, so it
is decided in exactly that order inside one or more real batches on PostgreSQL. A plain Python
model predicts every outcome and every balance. After every group we check, against the
database: per currency the sum of all balances is zero; no player's available balance is below
zero; posted and pending totals agree with the transfers table; and each player's balance is
the model's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from ledger_node import accounts as accounts_module
from ledger_node.audit import check_invariants
from ledger_node.node import LedgerNode
from ledger_node.operations import (
    CreateTransfer,
    Flow,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
)
from tests.support import (
    CLEARING,
    HOUSE,
    ledger_config,
    migrated_database,
    property_settings,
    unique,
)
from wire.results import Result

PLAYERS = 3
NAMES = [f"p{i}" for i in range(PLAYERS)] + ["house", "clearing"]

amounts = st.integers(min_value=1, max_value=500)
account_index = st.integers(min_value=0, max_value=len(NAMES) - 1)
player_index = st.integers(min_value=0, max_value=PLAYERS - 1)
references = st.sampled_from(["r1", "r2", "r3"])
operation = st.one_of(
    st.tuples(st.just("transfer"), account_index, account_index, amounts),
    st.tuples(st.just("hold"), account_index, account_index, amounts),
    st.tuples(st.just("post"), st.integers(0, 20), st.one_of(st.none(), amounts)),
    st.tuples(st.just("void"), st.integers(0, 20)),
    st.tuples(st.just("bet"), player_index, references, amounts),
    st.tuples(st.just("win"), player_index, amounts),
    st.tuples(st.just("rollback"), player_index, references),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    # Boundaries: exactly the available balance, one less and one more.
    st.tuples(st.just("exact"), player_index, st.integers(-1, 1)),
)
groups = st.lists(st.lists(operation, min_size=1, max_size=8), min_size=1, max_size=6)


@dataclass
class Model:
    ids: list[str]
    posted: dict[str, int] = field(default_factory=dict)
    pending_debits: dict[str, int] = field(default_factory=dict)
    holds: list[dict] = field(default_factory=list)  # committed holds only, in creation order
    bets: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for account in self.ids:
            self.posted.setdefault(account, 0)
            self.pending_debits.setdefault(account, 0)

    def is_player(self, account: str) -> bool:
        return account not in (HOUSE, CLEARING)

    def available(self, account: str) -> int:
        return self.posted[account] - self.pending_debits[account]

    def transfer(
        self, debit: str, credit: str, amount: int, hold: bool, game: bool = False
    ) -> Result:
        if debit == credit:
            return Result.ACCOUNTS_MUST_BE_DIFFERENT
        # The house moves only by bets, wins and rollbacks; clearing only with a player.
        if debit == HOUSE and not game:
            return Result.DEBIT_ACCOUNT_RESTRICTED
        if credit == HOUSE and not game:
            return Result.CREDIT_ACCOUNT_RESTRICTED
        if self.is_player(debit) and self.available(debit) < amount:
            return Result.EXCEEDS_AVAILABLE
        if hold:
            self.pending_debits[debit] += amount
        else:
            self.posted[debit] -= amount
            self.posted[credit] += amount
        return Result.OK

    def resolve(self, hold: dict, post_amount: int | None, post: bool) -> Result:
        if hold["status"] != "pending":
            return {
                "posted": Result.PENDING_TRANSFER_ALREADY_POSTED,
                "voided": Result.PENDING_TRANSFER_ALREADY_VOIDED,
            }[hold["status"]]
        amount = hold["amount"] if post_amount is None else post_amount
        if post and amount > hold["amount"]:
            return Result.POST_AMOUNT_EXCEEDS_PENDING
        self.pending_debits[hold["debit"]] -= hold["amount"]
        if post:
            self.posted[hold["debit"]] -= amount
            self.posted[hold["credit"]] += amount
        hold["status"] = "posted" if post else "voided"
        return Result.OK

    def bet(self, player: str, reference: str, amount: int) -> Result:
        existing = self.bets.get((player, reference))
        if existing is not None:
            return (
                Result.BET_ROLLED_BACK
                if existing[0] == "tombstone"
                else (Result.BET_REFERENCE_EXISTS)
            )
        result = self.transfer(player, HOUSE, amount, hold=False, game=True)
        if result is Result.OK:
            self.bets[(player, reference)] = ("placed", amount)
        return result

    def rollback(self, player: str, reference: str) -> Result:
        existing = self.bets.get((player, reference))
        if existing is None:
            self.bets[(player, reference)] = ("tombstone", 0)
        elif existing[0] == "placed":
            self.posted[HOUSE] -= existing[1]
            self.posted[player] += existing[1]
            self.bets[(player, reference)] = ("rolled_back", existing[1])
        return Result.OK


async def _run_example(node: LedgerNode, dsn: str, plan: list[list[tuple]]) -> None:
    async with node.pool.acquire() as connection:
        players = []
        for _ in range(PLAYERS):
            _, account, _ = await accounts_module.create_account(
                connection,
                region="eu",
                currency="EUR",
                metadata=None,
                idempotency_key=unique(),
                request_hash=b"h",
            )
            players.append(account["id"])
        start = {
            row["id"]: row["credits_posted"] - row["debits_posted"]
            for row in await connection.fetch(
                "SELECT id, credits_posted, debits_posted FROM accounts WHERE id = ANY($1)",
                [HOUSE, CLEARING],
            )
        }
    ids = [*players, HOUSE, CLEARING]
    model = Model(ids)
    model.posted[HOUSE] = start[HOUSE]
    model.posted[CLEARING] = start[CLEARING]
    # Fund every player so that refusals and successes both happen.
    plan = [[("transfer", len(NAMES) - 1, i, 300) for i in range(PLAYERS)], *plan]
    submitted: list[tuple] = []  # (operation, key, request_hash, expected result)

    for group in plan:
        batch: list[tuple] = []
        for step in group:
            kind = step[0]
            key, digest = unique(), None
            if kind == "exact":
                amount = model.available(players[step[1]]) + step[2]
                if amount < 1:
                    continue
                # Exactly the available balance, withdrawn to clearing.
                kind, step = "transfer", ("transfer", step[1], len(NAMES) - 1, amount)
            if kind in ("transfer", "hold"):
                debit, credit, amount = ids[step[1]], ids[step[2]], step[3]
                op = CreateTransfer(
                    debit,
                    credit,
                    amount,
                    "EUR",
                    pending=kind == "hold",
                    timeout_s=3600 if kind == "hold" else None,
                )
                expected = model.transfer(debit, credit, amount, hold=kind == "hold")
                record = (
                    {"debit": debit, "credit": credit, "amount": amount, "status": "pending"}
                    if kind == "hold"
                    else None
                )
            elif kind in ("post", "void"):
                if not model.holds:
                    continue
                record_hold = model.holds[step[1] % len(model.holds)]
                post_amount = step[2] if kind == "post" else None
                op = ResolvePending(
                    record_hold["id"], Flow.POST if kind == "post" else Flow.VOID, post_amount
                )
                expected = model.resolve(record_hold, post_amount, post=kind == "post")
                record = None
            elif kind == "bet":
                player, reference, amount = players[step[1]], step[2], step[3]
                op = PlaceBet(player, HOUSE, amount, "EUR", reference)
                expected = model.bet(player, reference, amount)
                record = None
            elif kind == "win":
                op = SettleWin(players[step[1]], HOUSE, step[2], "EUR", unique("w"))
                expected = model.transfer(HOUSE, players[step[1]], step[2], hold=False, game=True)
                record = None
            elif kind == "rollback":
                op = Rollback(players[step[1]], step[2])
                expected = model.rollback(players[step[1]], step[2])
                record = None
            else:  # replay an earlier request: same key, same body, same answer, no effect
                if not submitted:
                    continue
                op, key, digest, expected, _ = submitted[step[1] % len(submitted)]
                record = None
            digest = digest or key.encode()
            batch.append((op, key, digest, expected, record))
        futures = [
            node.batcher.submit(op, idempotency_key=key, request_hash=digest, name="prop")
            for op, key, digest, _, _ in batch
        ]
        outcomes = await asyncio.gather(*futures)
        for (op, key, digest, expected, record), outcome in zip(batch, outcomes, strict=True):
            assert outcome.result is expected, (op, outcome.result, expected)
            if record is not None and outcome.result is Result.OK:
                record["id"] = outcome.transfer_id
                model.holds.append(record)
            if all(s[1] != key for s in submitted):
                submitted.append((op, key, digest, expected, record))
        await _check_against_model(dsn, model, players)


async def _check_against_model(dsn: str, model: Model, players: list[str]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        failures = {
            r.name: r.violations[:3] for r in await check_invariants(connection) if not r.ok
        }
        assert not failures, failures
        rows = await connection.fetch(
            "SELECT id, credits_posted - debits_posted AS posted, debits_pending "
            "FROM accounts WHERE id = ANY($1)",
            players,
        )
    finally:
        await connection.close()
    for row in rows:
        assert row["posted"] == model.posted[row["id"]], row["id"]
        assert row["debits_pending"] == model.pending_debits[row["id"]], row["id"]


@property_settings(40, suppress_health_check=list(HealthCheck))
@given(plan=groups)
def test_ledger_matches_model_and_keeps_invariants(plan, fresh_dsn_for_properties, keyring):
    async def run() -> None:
        node = LedgerNode(
            ledger_config(fresh_dsn_for_properties, expiry_interval_ms=3_600_000), keyring
        )
        await node.start()
        try:
            await _run_example(node, fresh_dsn_for_properties, plan)
        finally:
            await node.stop()

    asyncio.run(run())


@pytest.fixture(scope="module")
def fresh_dsn_for_properties(postgres) -> str:
    """One database for every example of this module: examples use fresh players, and the
    invariants are global, so they must hold across examples too."""
    return migrated_database(postgres, "ledger_properties")

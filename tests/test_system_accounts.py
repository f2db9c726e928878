"""Who may move a system account, enforced by the ledger itself (docs/decisions/0002).

Proved two ways. The rule, pure: every pair of account kinds under every kind of operation is
decided as an independent restatement of the policy says (the house by bets, wins and
rollbacks; clearing by deposits and withdrawals; transit by sagas alone; never two system
accounts together). End to end through the gateways: a player paying into a transit account
(the acceptance battery's case, which broke the audit), an admin debiting or crediting a
transit account, and an admin moving the house by a plain transfer are each refused with
``system-account-restricted`` and move nothing; a wallet token that lists a system account
among its accounts gets no right to it; deposits, withdrawals and bets still work; and the
audit across both regions stays clean.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from ledger_node.global_audit import audit_regions
from ledger_node.operations import AccountKind, AccountState, BatchState, CreateTransfer, Kind
from ledger_node.rules import create_transfer
from tests.support import unique
from wire.results import Result

P = "urn:regiongate:problem:"

ALLOWED = {
    # (debit kind, credit kind): the operation kinds that may move money between them
    (AccountKind.PLAYER, AccountKind.PLAYER): set(Kind),
    (AccountKind.PLAYER, AccountKind.HOUSE): {Kind.BET},
    (AccountKind.HOUSE, AccountKind.PLAYER): {Kind.WIN, Kind.ROLLBACK},
    (AccountKind.CLEARING, AccountKind.PLAYER): {Kind.TRANSFER},
    (AccountKind.PLAYER, AccountKind.CLEARING): {Kind.TRANSFER},
    (AccountKind.TRANSIT, AccountKind.PLAYER): {Kind.SAGA},
    (AccountKind.PLAYER, AccountKind.TRANSIT): {Kind.SAGA},
}


def _account(account_id: str, kind: AccountKind) -> AccountState:
    return AccountState(account_id, kind.value, "active", "EUR", 0, 1_000, 0, 0, 1)


def _state(debit: AccountState, credit: AccountState) -> BatchState:
    return BatchState(
        now=datetime.now(UTC), region="eu", accounts={debit.id: debit, credit.id: credit}
    )


@pytest.mark.parametrize(
    ("debit_kind", "credit_kind", "kind"),
    list(itertools.product(AccountKind, AccountKind, Kind)),
)
def test_the_rule_for_every_pair_of_account_kinds(debit_kind, credit_kind, kind):
    debit, credit = _account("eu-d", debit_kind), _account("eu-c", credit_kind)
    outcome, row = create_transfer(
        _state(debit, credit), CreateTransfer("eu-d", "eu-c", 10, "EUR", kind=kind)
    )
    allowed = kind in ALLOWED.get((debit_kind, credit_kind), set())
    assert (outcome.result is Result.OK) == allowed, outcome.result
    if not allowed:
        assert outcome.result in (
            Result.DEBIT_ACCOUNT_RESTRICTED,
            Result.CREDIT_ACCOUNT_RESTRICTED,
        )
        assert row is None and debit.version == 1 and credit.version == 1


async def _balances(cluster, accounts) -> dict:
    return {
        account: (
            await cluster.call("eu", "GET", f"/v1/accounts/{account}/balance", token=cluster.admin)
        )[2]
        for account in accounts
    }


async def test_transit_and_house_accounts_refuse_every_caller_but_their_operations(cluster):
    alice = await cluster.account("eu", fund=100)
    transit, house, clearing = "eu-transit-us-EUR", "eu-house-EUR", "eu-clearing-EUR"
    # A token that lists system accounts gets no right to them.
    player = cluster.keys.mint("alice", "wallet", accounts=[alice, clearing, transit])
    before = await _balances(cluster, (alice, transit, house, clearing))

    def transfer(debit, credit):
        return {"debit_account_id": debit, "credit_account_id": credit, "amount": 1}

    refused = [
        ("a player paying into transit", player, transfer(alice, transit), 422),
        ("an admin crediting transit", cluster.admin, transfer(clearing, transit), 422),
        ("an admin debiting transit", cluster.admin, transfer(transit, alice), 422),
        ("an admin paying the house", cluster.admin, transfer(alice, house), 422),
        ("an admin paying from the house", cluster.admin, transfer(house, alice), 422),
        ("a player debiting clearing", player, transfer(clearing, alice), 403),
        ("a player debiting transit", player, transfer(transit, alice), 403),
    ]
    for name, token, body, expected in refused:
        for gateway in ("eu", "us"):
            status, _, problem = await cluster.call(
                gateway,
                "POST",
                "/v1/transfers",
                token=token,
                key=unique(),
                body={**body, "currency": "EUR"},
            )
            assert status == expected, (name, problem)
            if status == 422:
                assert problem["type"] == P + "system-account-restricted", (name, problem)
    assert await _balances(cluster, before) == before

    allowed = [
        ("a deposit", cluster.admin, "/v1/transfers", transfer(clearing, alice)),
        ("a withdrawal", player, "/v1/transfers", transfer(alice, clearing)),
        ("a bet", cluster.admin, "/v1/bets", {"account_id": alice, "reference": unique()}),
    ]
    for name, token, path, body in allowed:
        body = {"amount": 1, **body, "currency": "EUR"}
        status, _, answer = await cluster.call(
            "us", "POST", path, token=token, key=unique(), body=body
        )
        assert status == 201, (name, answer)
    failures = {
        r.name: r.violations[:3]
        for r in await audit_regions({c: n.dsn for c, n in cluster.regions.items()}, grace_s=1)
        if not r.ok
    }
    assert not failures, failures

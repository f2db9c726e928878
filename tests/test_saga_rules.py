"""The saga's ledger rules, as properties over random sequences (hypothesis), decided straight
through ``ledger_node.decide`` on in-memory batch state, as one batch after another would.

At the destination, any interleaving of step 2 and its cancel, repeated, with the odd wrong
amount: each step id's first decision is final and every later call answers it; the payee
holds exactly the applied amounts and the transit account paid exactly that; a refusal (a
frozen payee) is final too. At the source, a saga's hold is posted or voided once, whatever
finishes and public posts or voids arrive, and debits equal credits throughout.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ledger_node.answers import answer
from ledger_node.decide import decide
from ledger_node.operations import (
    AccountState,
    BatchState,
    CancelStep,
    CreditStep,
    FinishSaga,
    Flow,
    PendingState,
    ResolvePending,
    StartSaga,
)
from tests.support import property_settings
from wire.ids import saga_credit_transfer_id, transit_account_id
from wire.results import Result

TRANSIT_AT_US = transit_account_id("us", "eu", "EUR")
TRANSIT_AT_EU = transit_account_id("eu", "us", "EUR")
SAGAS = [f"eu-s-{str(n) * 26}" for n in range(1, 5)]
AMOUNTS = {saga: 10 * (n + 1) for n, saga in enumerate(SAGAS)}


def _account(account_id: str, kind: str, status: str = "active", credits: int = 0):
    return AccountState(account_id, kind, status, "EUR", 0, credits, 0, 0, 0)


def _state(region: str, accounts: list[AccountState]) -> BatchState:
    return BatchState(now=datetime.now(UTC), region=region, accounts={a.id: a for a in accounts})


def _next_batch(state: BatchState) -> None:
    """What committing and starting the next batch does to the state: new rows are in."""
    for step in state.steps.values():
        step.new = None
    for row in state.rows:
        if row.flow == Flow.PENDING:
            state.pendings[row.id] = PendingState(
                row.id, row.kind, row.flow, row.status, row.debit_account_id,
                row.credit_account_id, row.amount, row.currency, row.timeout_at,
            )  # fmt: skip
    for saga in state.sagas.values():
        saga.new = None
        saga.finished = None
    state.rows.clear()


step_calls = st.lists(
    st.tuples(st.sampled_from(SAGAS), st.sampled_from(["credit", "cancel"]), st.booleans()),
    min_size=1,
    max_size=40,
)


@property_settings(300)
@given(calls=step_calls, frozen=st.booleans())
def test_each_step_id_is_decided_once_and_answered_the_same(calls, frozen):
    payee = _account("us-payee", "player", "frozen" if frozen else "active")
    state = _state("us", [_account(TRANSIT_AT_US, "transit"), payee])
    first: dict[str, tuple[str, int]] = {}  # step id -> (status, amount) of its first call
    for saga_id, action, other_amount in calls:
        amount = AMOUNTS[saga_id] + (1 if other_amount else 0)
        common = {
            "step_id": saga_id, "saga_id": saga_id, "origin_region": "eu",
            "credit_account_id": payee.id, "amount": amount, "currency": "EUR",
        }  # fmt: skip
        if action == "credit":
            op = CreditStep(**common, transfer_id=saga_credit_transfer_id(saga_id, "us"))
        else:
            op = CancelStep(**common)
        outcome = decide(state, op)
        decided = state.steps[saga_id]
        if saga_id not in first:
            expected = {"credit": "refused" if frozen else "applied", "cancel": "cancelled"}
            assert decided.status == expected[action]
            first[saga_id] = (expected[action], amount)
        else:
            status, decided_amount = first[saga_id]
            assert decided.status == status, "a decided step changed"
            if action == "cancel":
                assert outcome.result is Result.OK and status in answer(outcome)[1].decode()
            elif amount != decided_amount:
                assert outcome.result is Result.SAGA_STEP_CONFLICT
            elif status == "applied":
                assert outcome.result is Result.OK and outcome.replayed
            else:
                assert outcome.result is not Result.OK
        _next_batch(state)
    applied = sum(amount for status, amount in first.values() if status == "applied")
    assert payee.credits_posted == applied
    assert state.accounts[TRANSIT_AT_US].debits_posted == applied
    assert not frozen or applied == 0


finishes = st.lists(
    st.sampled_from(["post", "void", "public post", "public void"]), min_size=1, max_size=12
)


@property_settings(300)
@given(actions=finishes)
def test_a_saga_hold_is_resolved_once_and_only_by_its_saga(actions):
    payer = _account("eu-payer", "player", credits=1_000)
    state = _state("eu", [payer, _account(TRANSIT_AT_EU, "transit")])
    saga_id = SAGAS[0]
    started = decide(
        state,
        StartSaga(
            saga_id=saga_id, debit_account_id=payer.id, credit_account_id="us-payee",
            credit_region="us", amount=300, currency="EUR", deadline_ms=1_000,
            lease_owner="test", lease_ms=1_000,
        ),
    )  # fmt: skip
    assert started.result is Result.OK and payer.available == 700
    hold_id = started.transfer_id
    _next_batch(state)
    resolved = None
    for action in actions:
        flow = Flow.POST if action.endswith("post") else Flow.VOID
        if action.startswith("public"):
            outcome = decide(state, ResolvePending(hold_id, flow))
            assert outcome.result is Result.TRANSFER_OWNED_BY_SAGA or resolved is not None
        else:
            outcome = decide(
                state,
                FinishSaga(
                    saga_id=saga_id, hold_transfer_id=hold_id, flow=flow,
                    credit_transfer_id="us-t-x" if flow == Flow.POST else None,
                    reason=None if flow == Flow.POST else "deadline_exceeded",
                    debit_account_id=payer.id, credit_region="us", currency="EUR",
                ),
            )  # fmt: skip
            assert outcome.result is Result.OK
            resolved = resolved or flow
        _next_batch(state)
        transit = state.accounts[TRANSIT_AT_EU]
        assert payer.debits_posted == transit.credits_posted  # debits equal credits
        assert payer.debits_pending == transit.credits_pending
    if resolved is None:
        assert payer.debits_pending == 300 and payer.debits_posted == 0
    elif resolved == Flow.POST:
        assert payer.debits_posted == 300 and payer.debits_pending == 0
    else:
        assert payer.debits_posted == 0 and payer.available == 1_000

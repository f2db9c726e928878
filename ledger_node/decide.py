"""Which rule decides an operation: the one entry point a batch calls for each operation, in
arrival order (transfer and game rules in ``rules``, the saga's in ``saga_rules``)."""

from __future__ import annotations

from ledger_node import rules, saga_rules
from ledger_node.operations import (
    BatchState,
    CancelStep,
    CreateTransfer,
    CreditStep,
    FinishSaga,
    Operation,
    Outcome,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
    StartSaga,
)


def decide(state: BatchState, op: Operation) -> Outcome:
    """Apply one operation to the batch state and say what happened."""
    if isinstance(op, CreateTransfer):
        return rules.create_transfer(state, op)[0]
    if isinstance(op, ResolvePending):
        return rules.resolve_pending(state, op)
    if isinstance(op, PlaceBet):
        return rules.place_bet(state, op)
    if isinstance(op, SettleWin):
        return rules.settle_win(state, op)
    if isinstance(op, Rollback):
        return rules.rollback(state, op)
    if isinstance(op, StartSaga):
        return saga_rules.start_saga(state, op)
    if isinstance(op, FinishSaga):
        return saga_rules.finish_saga(state, op)
    if isinstance(op, CreditStep):
        return saga_rules.credit_step(state, op)
    if isinstance(op, CancelStep):
        return saga_rules.cancel_step(state, op)
    raise TypeError(f"unknown operation {type(op).__name__}")

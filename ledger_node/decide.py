"""Which rule decides an operation: the one entry point a batch calls for each operation, in
arrival order (transfer and game rules in ``rules``, the saga's in ``saga_rules``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

RULES: dict[type, Callable[[BatchState, Any], Outcome]] = {
    CreateTransfer: lambda state, op: rules.create_transfer(state, op)[0],
    ResolvePending: rules.resolve_pending,
    PlaceBet: rules.place_bet,
    SettleWin: rules.settle_win,
    Rollback: rules.rollback,
    StartSaga: saga_rules.start_saga,
    FinishSaga: saga_rules.finish_saga,
    CreditStep: saga_rules.credit_step,
    CancelStep: saga_rules.cancel_step,
}
"""The rule for each kind of operation, by its exact type (a subclass has no rule of its own)."""


def decide(state: BatchState, op: Operation) -> Outcome:
    """Apply one operation to the batch state and say what happened."""
    rule = RULES.get(type(op))
    if rule is None:
        raise TypeError(f"unknown operation {type(op).__name__}")
    return rule(state, op)

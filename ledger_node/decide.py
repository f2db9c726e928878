"""Which rule decides an operation: the one entry point a batch calls for each operation, in
arrival order (transfer and game rules in ``rules``, the saga's in ``saga_rules``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger_node import operations as ops
from ledger_node import rules, saga_rules
from ledger_node.operations import BatchState, Operation, Outcome

RULES: dict[type, Callable[[BatchState, Any], Outcome]] = {
    ops.CreateTransfer: lambda state, op: rules.create_transfer(state, op)[0],
    ops.ResolvePending: rules.resolve_pending,
    ops.PlaceBet: rules.place_bet,
    ops.SettleWin: rules.settle_win,
    ops.Rollback: rules.rollback,
    ops.StartSaga: saga_rules.start_saga,
    ops.FinishSaga: saga_rules.finish_saga,
    ops.CreditStep: saga_rules.credit_step,
    ops.CancelStep: saga_rules.cancel_step,
}
"""The rule for each kind of operation, by its exact type (a subclass has no rule of its own)."""


def decide(state: BatchState, op: Operation) -> Outcome:
    """Apply one operation to the batch state and say what happened."""
    rule = RULES.get(type(op))
    if rule is None:
        raise TypeError(f"unknown operation {type(op).__name__}")
    return rule(state, op)

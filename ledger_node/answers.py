"""The ledger's API edge for decided operations: an ``Outcome`` (values, from the rules) as the
status and bytes of its answer. The HTTP handlers answer with it, and the batch stores the same
bytes with an idempotency key, so a replay answers exactly what the first request was answered
(docs/decisions/0009)."""

from __future__ import annotations

from ledger_node.operations import Outcome
from wire.problems import encode, result_problem
from wire.results import Result


def answer(outcome: Outcome) -> tuple[int, bytes]:
    """The status and body of an outcome's answer."""
    if outcome.answer is not None:
        return outcome.answer
    if outcome.result is Result.OK:
        return outcome.effect.value, encode(outcome.view)
    return result_problem(outcome.result, **(outcome.view or {}))

"""Invariant checks that still run under ``python -O`` (a bare assert would not)."""

from __future__ import annotations

from ledger_node.errors import InvariantViolation


def ensure(condition: bool, message: str) -> None:
    """Raise InvariantViolation(message) unless condition holds."""
    if not condition:
        raise InvariantViolation(message)

"""Invariant checks that still run under ``python -O`` (a bare assert would not), and the
checks every batch must pass before it commits."""

from __future__ import annotations

import collections

from ledger_node.errors import InvariantViolation
from ledger_node.operations import AccountKind, AccountState, BatchState


def ensure(condition: bool, message: str) -> None:
    """Raise InvariantViolation(message) unless condition holds."""
    if not condition:
        raise InvariantViolation(message)


def check_batch(state: BatchState, before: dict[str, tuple[int, int, int, int]]) -> None:
    """Before commit: per currency, debits equal credits, posted and pending alike; no player
    account below zero available; only accounts the batch meant to touch changed."""
    posted_net: dict[str, int] = collections.defaultdict(int)
    pending_net: dict[str, int] = collections.defaultdict(int)
    for account_id, account in state.accounts.items():
        old = before[account_id]
        if account.snapshot() == old:
            continue
        ensure(account_id in state.touched, f"account {account_id} changed but is not touched")
        posted_net[account.currency] += (account.credits_posted - old[1]) - (
            account.debits_posted - old[0]
        )
        pending_net[account.currency] += (account.credits_pending - old[3]) - (
            account.debits_pending - old[2]
        )
        _check_account(account)
    for currency, net in posted_net.items():
        ensure(net == 0, f"batch posts {net} more credits than debits in {currency}")
    for currency, net in pending_net.items():
        ensure(net == 0, f"batch holds {net} more pending credits than debits in {currency}")


def _check_account(account: AccountState) -> None:
    ensure(
        min(account.snapshot()) >= 0,
        f"account {account.id} has a negative total: {account.snapshot()}",
    )
    if account.kind == AccountKind.PLAYER:
        ensure(account.available >= 0, f"player account {account.id} overdrawn")

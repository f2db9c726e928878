"""The operations a batch decides, and the state a batch holds while it decides them.

HTTP handlers turn validated requests into operations; the batcher locks what they touch, and
``ledger_node.decide`` applies them one by one, in arrival order, to the in-memory state below.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import datetime

from ledger_node.results import Result

BIGINT_MAX = 2**63 - 1


class Flow(enum.StrEnum):
    SINGLE = "single"
    PENDING = "pending"
    POST = "post"
    VOID = "void"
    EXPIRE = "expire"


class Status(enum.StrEnum):
    """A transfer's lifecycle: pending -> posted | voided | expired; single rows are posted."""

    POSTED = "posted"
    PENDING = "pending"
    VOIDED = "voided"
    EXPIRED = "expired"


class Kind(enum.StrEnum):
    TRANSFER = "transfer"
    BET = "bet"
    WIN = "win"
    ROLLBACK = "rollback"


class BetStatus(enum.StrEnum):
    PLACED = "placed"
    ROLLED_BACK = "rolled_back"
    TOMBSTONE = "tombstone"


@dataclass(slots=True)
class CreateTransfer:
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    pending: bool = False
    timeout_s: int | None = None
    kind: Kind = Kind.TRANSFER
    reference: str | None = None
    round_id: str | None = None
    metadata: str | None = None
    """JSON text, already validated and bounded."""


@dataclass(slots=True)
class ResolvePending:
    pending_id: str
    flow: Flow  # POST, VOID or EXPIRE
    amount: int | None = None
    """For POST: the amount to post, up to the pending amount; None posts all of it."""


@dataclass(slots=True)
class PlaceBet:
    account_id: str
    house_account_id: str
    amount: int
    currency: str
    reference: str
    round_id: str | None = None
    metadata: str | None = None


@dataclass(slots=True)
class SettleWin:
    account_id: str
    house_account_id: str
    amount: int
    currency: str
    reference: str
    round_id: str | None = None
    metadata: str | None = None


@dataclass(slots=True)
class Rollback:
    account_id: str
    reference: str
    round_id: str | None = None


Operation = CreateTransfer | ResolvePending | PlaceBet | SettleWin | Rollback


@dataclass(slots=True)
class Outcome:
    """What a batch answers for one operation; body is the exact bytes sent (and replayed)."""

    result: Result
    status_code: int
    body: bytes
    transfer_id: str | None = None
    replayed: bool = False


@dataclass(slots=True)
class Submission:
    """One operation waiting in the batch queue, with the future its request awaits."""

    operation: Operation
    idempotency_key: str | None
    request_hash: bytes
    name: str
    future: asyncio.Future[Outcome]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class AccountState:
    id: str
    kind: str
    status: str
    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    version: int

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending

    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending)


@dataclass(slots=True)
class PendingState:
    id: str
    flow: str
    status: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    timeout_at: datetime | None
    resolved_amount: int | None = None
    dirty: bool = False


@dataclass(slots=True)
class BetState:
    account_id: str
    reference: str
    status: str
    bet_transfer_id: str | None
    rollback_transfer_id: str | None
    bet_amount: int | None
    house_account_id: str | None
    dirty: bool = False


@dataclass(slots=True)
class StoredKey:
    request_hash: bytes
    status_code: int
    body: bytes
    result: str
    transfer_id: str | None


@dataclass(slots=True)
class TransferRow:
    """A row for the transfers table, with both accounts' balances right after it."""

    id: str
    kind: str
    flow: str
    status: str
    pending_id: str | None
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    timeout_at: datetime | None
    reference: str | None
    round_id: str | None
    metadata: str | None
    created_at: datetime
    debit_after: tuple[int, int, int, int]
    credit_after: tuple[int, int, int, int]
    """(posted, debits_pending, credits_pending, version) of each account after this row."""
    resolved_amount: int | None = None


@dataclass(slots=True)
class BatchState:
    """Everything one batch has locked and read, and what it has decided so far."""

    now: datetime
    region: str
    accounts: dict[str, AccountState]
    pendings: dict[str, PendingState] = field(default_factory=dict)
    bets: dict[tuple[str, str], BetState] = field(default_factory=dict)
    stored_keys: dict[str, StoredKey] = field(default_factory=dict)
    new_keys: dict[str, tuple[bytes, Outcome, str]] = field(default_factory=dict)
    rows: list[TransferRow] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

"""The operations a batch decides, and the state a batch holds while it decides them.

HTTP handlers turn validated requests into operations; the batcher locks what they touch, and
``ledger_node.decide`` applies them one by one, in arrival order, to the in-memory state below.

Over 400 lines: the rules' whole vocabulary (operations, states, outcomes) in one place.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wire.results import Result

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
    SAGA = "saga"


class AccountStatus(enum.StrEnum):
    """An account's lifecycle: active <-> frozen, either -> closed (final, zero balance)."""

    ACTIVE = "active"
    FROZEN = "frozen"
    CLOSED = "closed"


ACCOUNT_STATUS_TRANSITIONS: dict[AccountStatus, frozenset[AccountStatus]] = {
    AccountStatus.ACTIVE: frozenset({AccountStatus.FROZEN, AccountStatus.CLOSED}),
    AccountStatus.FROZEN: frozenset({AccountStatus.ACTIVE, AccountStatus.CLOSED}),
    AccountStatus.CLOSED: frozenset(),
}


class AccountKind(enum.StrEnum):
    PLAYER = "player"
    HOUSE = "house"
    CLEARING = "clearing"
    TRANSIT = "transit"


# Which operations may move each kind of system account, as debit and as credit
# (docs/decisions/0002): the house by bets (credit), wins and rollbacks (debit); clearing by
# deposits (debit) and withdrawals (credit), which are plain transfers; a transit account by
# sagas alone. The other side is always a player account, so two system accounts never move
# money between themselves. Player accounts take every kind.
SYSTEM_ACCOUNT_DEBITS: dict[AccountKind, frozenset[Kind]] = {
    AccountKind.HOUSE: frozenset({Kind.WIN, Kind.ROLLBACK}),
    AccountKind.CLEARING: frozenset({Kind.TRANSFER}),
    AccountKind.TRANSIT: frozenset({Kind.SAGA}),
}
SYSTEM_ACCOUNT_CREDITS: dict[AccountKind, frozenset[Kind]] = {
    AccountKind.HOUSE: frozenset({Kind.BET}),
    AccountKind.CLEARING: frozenset({Kind.TRANSFER}),
    AccountKind.TRANSIT: frozenset({Kind.SAGA}),
}


def system_account_refusal(debit_kind: str, credit_kind: str, kind: Kind) -> Result | None:
    """The refusal of an operation of this kind between accounts of these kinds, or None."""
    if debit_kind != AccountKind.PLAYER and kind not in SYSTEM_ACCOUNT_DEBITS[debit_kind]:
        return Result.DEBIT_ACCOUNT_RESTRICTED
    if credit_kind != AccountKind.PLAYER and kind not in SYSTEM_ACCOUNT_CREDITS[credit_kind]:
        return Result.CREDIT_ACCOUNT_RESTRICTED
    if debit_kind != AccountKind.PLAYER and credit_kind != AccountKind.PLAYER:
        return Result.CREDIT_ACCOUNT_RESTRICTED
    return None


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
    transfer_id: str | None = None
    """Set only where the id must be derived, not drawn (a saga's credit at the destination)."""


@dataclass(slots=True)
class ResolvePending:
    pending_id: str
    flow: Flow  # POST, VOID or EXPIRE
    amount: int | None = None
    """For POST: the amount to post, up to the pending amount; None posts all of it."""
    by_saga: bool = False
    """A saga's hold is resolved by its saga alone, never by a public post or void."""


@dataclass(slots=True)
class _GameMove:
    """A bet or a win: money between a player and the region's house, for a game round."""

    account_id: str
    house_account_id: str
    amount: int
    currency: str
    reference: str
    round_id: str | None = None
    metadata: str | None = None


@dataclass(slots=True)
class PlaceBet(_GameMove):
    """Player to house. A class of its own, never a parent of SettleWin: the rules tell the two
    apart by type."""


@dataclass(slots=True)
class SettleWin(_GameMove):
    """House to player."""


@dataclass(slots=True)
class Rollback:
    account_id: str
    reference: str
    round_id: str | None = None


class SagaStatus(enum.StrEnum):
    """The orchestrator's saga: held -> completed | compensated (docs/architecture.md, the saga)."""

    HELD = "held"
    COMPLETED = "completed"
    COMPENSATED = "compensated"


class StepStatus(enum.StrEnum):
    """The destination's record of a saga's step 2; every status is final."""

    APPLIED = "applied"
    REFUSED = "refused"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class StartSaga:
    """Step 1 at the source: hold the amount on the debit account towards the destination's
    transit account, and write the saga's row in the same transaction."""

    saga_id: str
    debit_account_id: str
    credit_account_id: str
    credit_region: str
    amount: int
    currency: str
    deadline_ms: int
    lease_owner: str
    lease_ms: int
    reference: str | None = None
    metadata: str | None = None


@dataclass(slots=True)
class FinishSaga:
    """Step 3 (post the hold) or the compensation (void it), with the saga's final status."""

    saga_id: str
    hold_transfer_id: str
    flow: Flow  # POST or VOID
    credit_transfer_id: str | None
    reason: str | None
    debit_account_id: str
    credit_region: str
    currency: str
    """The hold's accounts are the debit account and the transit account of credit_region."""


@dataclass(slots=True)
class CreditStep:
    """Step 2 at the destination: credit the account from the source's transit account, once
    per step id, unless the step was cancelled first."""

    step_id: str
    saga_id: str
    origin_region: str
    credit_account_id: str
    amount: int
    currency: str
    transfer_id: str


@dataclass(slots=True)
class CancelStep:
    """The orchestrator gives up on step 2: the destination says it was applied, or records a
    tombstone that refuses it for ever."""

    step_id: str
    saga_id: str
    origin_region: str
    credit_account_id: str
    amount: int
    currency: str


Operation = (
    CreateTransfer
    | ResolvePending
    | PlaceBet
    | SettleWin
    | Rollback
    | StartSaga
    | FinishSaga
    | CreditStep
    | CancelStep
)


class Effect(enum.Enum):
    """What an OK outcome did, which its answer's status says (the edge maps it)."""

    CREATED = 201
    """A new transfer or saga step, applied now."""
    STARTED = 202
    """A cross-region transfer whose saga runs on."""
    DONE = 200
    """An answer about state that already was (a rollback, a saga's finish, a repeat)."""


@dataclass(slots=True)
class Outcome:
    """What a batch decided for one operation, as values: the rules never render HTTP. The API
    edge turns it into an answer (ledger_node.answers); a stored key's replay carries the
    answer it was given the first time, byte for byte (docs/decisions/0009)."""

    result: Result
    view: dict[str, Any] | None = None
    """For OK, what the answer shows (a transfer, a rollback, a saga step); for a refusal, the
    problem's members beyond its type (its detail, a saga step's status)."""
    effect: Effect = Effect.DONE
    transfer_id: str | None = None
    replayed: bool = False
    answer: tuple[int, bytes] | None = None
    """Set only on a replay from a stored key: the original status and body."""


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
    kind: str
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
class SagaState:
    """What a batch needs of a saga row: enough to start it or to finish it once."""

    id: str
    status: str
    hold_transfer_id: str
    new: dict | None = None
    """The full row to insert, for a saga this batch started."""
    finished: dict | None = None
    """The final status and its transfers, for a saga this batch finished."""


@dataclass(slots=True)
class StepState:
    step_id: str
    status: str
    transfer_id: str | None
    amount: int
    reason: str | None = None
    new: dict | None = None
    """The row to insert, for a step this batch decided."""


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
    sagas: dict[str, SagaState] = field(default_factory=dict)
    steps: dict[str, StepState] = field(default_factory=dict)
    stored_keys: dict[str, StoredKey] = field(default_factory=dict)
    new_keys: dict[str, tuple[bytes, Outcome, str]] = field(default_factory=dict)
    rows: list[TransferRow] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

"""The ledger's rules for transfers, holds and game operations, applied to one batch's locked
state, one operation at a time, in arrival order. Pure: no I/O, so the rules are tested directly
and every outcome is a ``Result`` value. The saga's rules build on these (saga_rules), and
``decide`` picks the rule for an operation.

A transfer that fails changes nothing and fails alone; the state the next operation sees is
exactly the state after every earlier success in the batch.
"""

from __future__ import annotations

from datetime import timedelta

from ledger_node import render
from ledger_node.invariants import ensure
from ledger_node.operations import (
    BIGINT_MAX,
    AccountKind,
    AccountState,
    AccountStatus,
    BatchState,
    BetState,
    BetStatus,
    CreateTransfer,
    Effect,
    Flow,
    Kind,
    Outcome,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
    Status,
    TransferRow,
    system_account_refusal,
)
from wire.ids import new_transfer_id
from wire.results import Result


def fail(result: Result, detail: str | None = None) -> Outcome:
    return Outcome(result, {"detail": detail} if detail else None)


def _after(account: AccountState) -> tuple[int, int, int, int]:
    return (account.posted, account.debits_pending, account.credits_pending, account.version)


def _check_pair(
    state: BatchState, debit_id: str, credit_id: str, currency: str
) -> tuple[Result, AccountState | None, AccountState | None]:
    if debit_id == credit_id:
        return Result.ACCOUNTS_MUST_BE_DIFFERENT, None, None
    debit = state.accounts.get(debit_id)
    if debit is None:
        return Result.DEBIT_ACCOUNT_NOT_FOUND, None, None
    credit = state.accounts.get(credit_id)
    if credit is None:
        return Result.CREDIT_ACCOUNT_NOT_FOUND, None, None
    if debit.currency != currency or credit.currency != currency:
        return Result.CURRENCY_MISMATCH, None, None
    if debit.status == AccountStatus.CLOSED:
        return Result.DEBIT_ACCOUNT_CLOSED, None, None
    if credit.status == AccountStatus.CLOSED:
        return Result.CREDIT_ACCOUNT_CLOSED, None, None
    if debit.status == AccountStatus.FROZEN:
        return Result.DEBIT_ACCOUNT_FROZEN, None, None
    if credit.status == AccountStatus.FROZEN:
        return Result.CREDIT_ACCOUNT_FROZEN, None, None
    return Result.OK, debit, credit


def create_transfer(state: BatchState, op: CreateTransfer) -> tuple[Outcome, TransferRow | None]:
    result, debit, credit = _check_pair(
        state, op.debit_account_id, op.credit_account_id, op.currency
    )
    if result is not Result.OK:
        return fail(result), None
    ensure(debit is not None and credit is not None, "checked pair lost an account")
    refusal = system_account_refusal(debit.kind, credit.kind, op.kind)
    if refusal is not None:
        return fail(refusal), None
    amount = op.amount
    if (
        debit.debits_posted + debit.debits_pending + amount > BIGINT_MAX
        or credit.credits_posted + credit.credits_pending + amount > BIGINT_MAX
    ):
        return fail(Result.OVERFLOWS_BALANCE), None
    # No overdraft: only player accounts are bounded below; system accounts (house, clearing,
    # transit) go negative by design.
    if debit.kind == AccountKind.PLAYER and debit.available < amount:
        return fail(Result.EXCEEDS_AVAILABLE), None

    if op.pending:
        debit.debits_pending += amount
        credit.credits_pending += amount
        flow, status = Flow.PENDING, Status.PENDING
        # A saga's hold has no timeout: expiring it while its credit may have applied at the
        # destination would create money, so only the saga resolves it.
        timeout_at = None if op.timeout_s is None else state.now + timedelta(seconds=op.timeout_s)
    else:
        debit.debits_posted += amount
        credit.credits_posted += amount
        flow, status, timeout_at = Flow.SINGLE, Status.POSTED, None
    debit.version += 1
    credit.version += 1
    row = TransferRow(
        id=op.transfer_id or new_transfer_id(state.region),
        kind=op.kind.value,
        flow=flow.value,
        status=status.value,
        pending_id=None,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=amount,
        currency=op.currency,
        timeout_at=timeout_at,
        reference=op.reference,
        round_id=op.round_id,
        metadata=op.metadata,
        created_at=state.now,
        debit_after=_after(debit),
        credit_after=_after(credit),
    )
    return _ok_transfer(state, row), row


def _ok_transfer(state: BatchState, row: TransferRow) -> Outcome:
    state.rows.append(row)
    state.touched.add(row.debit_account_id)
    state.touched.add(row.credit_account_id)
    return Outcome(Result.OK, render.transfer_dict(row), Effect.CREATED, row.id)


def resolve_pending(state: BatchState, op: ResolvePending) -> Outcome:
    pending = state.pendings.get(op.pending_id)
    if pending is None:
        return fail(Result.PENDING_TRANSFER_NOT_FOUND)
    if pending.flow != Flow.PENDING:
        return fail(Result.TRANSFER_NOT_PENDING_FLOW)
    if (pending.kind == Kind.SAGA) != op.by_saga:
        return fail(Result.TRANSFER_OWNED_BY_SAGA)
    if pending.status == Status.POSTED:
        return fail(Result.PENDING_TRANSFER_ALREADY_POSTED)
    if pending.status == Status.VOIDED:
        return fail(Result.PENDING_TRANSFER_ALREADY_VOIDED)
    if pending.status == Status.EXPIRED:
        return fail(Result.PENDING_TRANSFER_EXPIRED)
    if (
        op.flow != Flow.EXPIRE
        and pending.timeout_at is not None
        and state.now >= pending.timeout_at
    ):
        # Past its timeout a hold can no longer be posted or voided; the expiry task releases it.
        return fail(Result.PENDING_TRANSFER_EXPIRED)
    posted_amount = 0
    if op.flow == Flow.POST:
        posted_amount = pending.amount if op.amount is None else op.amount
        if posted_amount > pending.amount:
            return fail(Result.POST_AMOUNT_EXCEEDS_PENDING)
    debit = state.accounts[pending.debit_account_id]
    credit = state.accounts[pending.credit_account_id]
    debit.debits_pending -= pending.amount
    credit.credits_pending -= pending.amount
    debit.debits_posted += posted_amount
    credit.credits_posted += posted_amount
    debit.version += 1
    credit.version += 1
    status = {Flow.POST: Status.POSTED, Flow.VOID: Status.VOIDED, Flow.EXPIRE: Status.EXPIRED}[
        op.flow
    ]
    pending.status = status.value
    pending.resolved_amount = posted_amount
    pending.dirty = True
    row = TransferRow(
        id=new_transfer_id(state.region),
        kind=pending.kind,
        flow=op.flow.value,
        status=status.value,
        pending_id=pending.id,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=posted_amount if op.flow == Flow.POST else pending.amount,
        currency=pending.currency,
        timeout_at=None,
        reference=None,
        round_id=None,
        metadata=None,
        created_at=state.now,
        debit_after=_after(debit),
        credit_after=_after(credit),
    )
    return _ok_transfer(state, row)


def place_bet(state: BatchState, op: PlaceBet) -> Outcome:
    if op.account_id not in state.accounts:
        return fail(Result.ACCOUNT_NOT_FOUND)
    existing = state.bets.get((op.account_id, op.reference))
    if existing is not None:
        if existing.status == BetStatus.TOMBSTONE:
            return fail(Result.BET_ROLLED_BACK)
        return fail(Result.BET_REFERENCE_EXISTS)
    outcome, row = _game_transfer(state, op, Kind.BET)
    if row is not None:
        state.bets[(op.account_id, op.reference)] = BetState(
            account_id=op.account_id,
            reference=op.reference,
            status=BetStatus.PLACED.value,
            bet_transfer_id=row.id,
            rollback_transfer_id=None,
            bet_amount=row.amount,
            house_account_id=op.house_account_id,
            dirty=True,
        )
    return outcome


def settle_win(state: BatchState, op: SettleWin) -> Outcome:
    if op.account_id not in state.accounts:
        return fail(Result.ACCOUNT_NOT_FOUND)
    return _game_transfer(state, op, Kind.WIN)[0]


def _game_transfer(
    state: BatchState, op: PlaceBet | SettleWin, kind: Kind
) -> tuple[Outcome, TransferRow | None]:
    """A bet moves money from the player to the house; a win, from the house to the player."""
    player, house = op.account_id, op.house_account_id
    debit, credit = (player, house) if kind is Kind.BET else (house, player)
    return create_transfer(
        state,
        CreateTransfer(
            debit_account_id=debit,
            credit_account_id=credit,
            amount=op.amount,
            currency=op.currency,
            kind=kind,
            reference=op.reference,
            round_id=op.round_id,
            metadata=op.metadata,
        ),
    )


def _rollback_view(bet: BetState, outcome: str, transfer: dict | None) -> dict:
    return {
        "account_id": bet.account_id,
        "reference": bet.reference,
        "outcome": outcome,
        "bet_transfer_id": bet.bet_transfer_id,
        "rollback_transfer_id": bet.rollback_transfer_id,
        "rollback_transfer": transfer,
    }


def rollback(state: BatchState, op: Rollback) -> Outcome:
    key = (op.account_id, op.reference)
    bet = state.bets.get(key)
    if bet is None:
        # The rollback came first: leave a tombstone so that the late bet is refused.
        if op.account_id not in state.accounts:
            return fail(Result.ACCOUNT_NOT_FOUND)
        bet = BetState(
            op.account_id,
            op.reference,
            BetStatus.TOMBSTONE.value,
            None,
            None,
            None,
            None,
            dirty=True,
        )
        state.bets[key] = bet
        return Outcome(Result.OK, _rollback_view(bet, "tombstoned", None))
    if bet.status == BetStatus.TOMBSTONE:
        return Outcome(Result.OK, _rollback_view(bet, "tombstoned", None))
    if bet.status == BetStatus.ROLLED_BACK:
        view = _rollback_view(bet, "rolled_back", None)
        return Outcome(Result.OK, view, transfer_id=bet.rollback_transfer_id)
    ensure(
        bet.house_account_id is not None and bet.bet_amount is not None,
        f"placed bet {key} has no transfer",
    )
    account = state.accounts[op.account_id]
    outcome, row = create_transfer(
        state,
        CreateTransfer(
            debit_account_id=bet.house_account_id,
            credit_account_id=op.account_id,
            amount=bet.bet_amount,
            currency=account.currency,
            kind=Kind.ROLLBACK,
            reference=op.reference,
            round_id=op.round_id,
        ),
    )
    if row is None:
        return outcome
    bet.status = BetStatus.ROLLED_BACK.value
    bet.rollback_transfer_id = row.id
    bet.dirty = True
    view = _rollback_view(bet, "rolled_back", render.transfer_dict(row))
    return Outcome(Result.OK, view, transfer_id=row.id)

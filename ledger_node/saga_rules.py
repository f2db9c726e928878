"""The saga's ledger rules, decided inside a batch like every other operation (pure, no I/O).

At the source a saga starts with a hold towards the destination's transit account and ends by
posting or voiding it; at the destination its step 2 credits the account from the source's
transit account at most once per step id, and a cancel that arrives first leaves a tombstone.
The destination serialises step 2 and its cancel on the transit account's row lock, so exactly
one of them wins, and its answer is durable: every later call with that step id gets the same.
"""

from __future__ import annotations

from datetime import timedelta

from ledger_node import render, rules
from ledger_node.invariants import ensure
from ledger_node.operations import (
    BatchState,
    CancelStep,
    CreateTransfer,
    CreditStep,
    Effect,
    FinishSaga,
    Flow,
    Kind,
    Outcome,
    ResolvePending,
    SagaState,
    SagaStatus,
    StartSaga,
    StepState,
    StepStatus,
)
from wire.ids import transit_account_id
from wire.results import Result


def start_saga(state: BatchState, op: StartSaga) -> Outcome:
    transit = transit_account_id(state.region, op.credit_region, op.currency)
    outcome, row = rules.create_transfer(
        state,
        CreateTransfer(
            debit_account_id=op.debit_account_id,
            credit_account_id=transit,
            amount=op.amount,
            currency=op.currency,
            pending=True,
            timeout_s=None,
            kind=Kind.SAGA,
            reference=op.saga_id,
            metadata=op.metadata,
        ),
    )
    if row is None:
        # Insufficient funds (or a closed account) ends the saga here: nothing happened.
        return outcome
    ensure(op.saga_id not in state.sagas, f"saga {op.saga_id} started twice in one batch")
    saga = {
        "id": op.saga_id,
        "status": SagaStatus.HELD.value,
        "debit_account_id": op.debit_account_id,
        "credit_account_id": op.credit_account_id,
        "credit_region": op.credit_region,
        "amount": op.amount,
        "currency": op.currency,
        "hold_transfer_id": row.id,
        "reference": op.reference,
        "metadata": op.metadata,
        "deadline_at": state.now + timedelta(milliseconds=op.deadline_ms),
        "next_attempt_at": state.now,
        "lease_owner": op.lease_owner,
        "lease_until": state.now + timedelta(milliseconds=op.lease_ms),
        "created_at": state.now,
    }
    state.sagas[op.saga_id] = SagaState(op.saga_id, SagaStatus.HELD.value, row.id, new=saga)
    return Outcome(Result.OK, render.saga_dict(saga), Effect.STARTED, row.id)


def finish_saga(state: BatchState, op: FinishSaga) -> Outcome:
    saga = state.sagas.get(op.saga_id)
    if saga is None:
        return rules.fail(Result.SAGA_NOT_FOUND)
    ensure(saga.hold_transfer_id == op.hold_transfer_id, f"saga {saga.id} names another hold")
    if saga.status != SagaStatus.HELD:
        # Another driver finished it first; the saga's row says how.
        return Outcome(Result.OK, {"id": saga.id, "status": saga.status})
    outcome = rules.resolve_pending(
        state, ResolvePending(op.hold_transfer_id, op.flow, by_saga=True)
    )
    if outcome.result is not Result.OK:
        return outcome
    status = SagaStatus.COMPLETED if op.flow == Flow.POST else SagaStatus.COMPENSATED
    saga.status = status.value
    saga.finished = {
        "id": saga.id,
        "status": status.value,
        "finish_transfer_id": outcome.transfer_id,
        "credit_transfer_id": op.credit_transfer_id,
        "reason": op.reason,
    }
    view = {"id": saga.id, "status": status.value, "finished_at": render.rfc3339(state.now)}
    return Outcome(Result.OK, view, transfer_id=outcome.transfer_id)


def _step_view(step: StepState, saga_id: str) -> dict:
    return {"saga_id": saga_id, "step_status": step.status, "transfer_id": step.transfer_id}


def _step_refusal(result: Result, step: StepState) -> Outcome:
    return Outcome(result, {"step_status": step.status})


def credit_step(state: BatchState, op: CreditStep) -> Outcome:
    step = state.steps.get(op.step_id)
    if step is not None:
        if step.amount != op.amount:
            return rules.fail(Result.SAGA_STEP_CONFLICT)
        if step.status == StepStatus.APPLIED:
            view = _step_view(step, op.saga_id)
            return Outcome(Result.OK, view, transfer_id=step.transfer_id, replayed=True)
        if step.status == StepStatus.CANCELLED:
            return _step_refusal(Result.SAGA_STEP_CANCELLED, step)
        return _step_refusal(Result(step.reason), step)
    outcome, row = rules.create_transfer(
        state,
        CreateTransfer(
            debit_account_id=transit_account_id(state.region, op.origin_region, op.currency),
            credit_account_id=op.credit_account_id,
            amount=op.amount,
            currency=op.currency,
            kind=Kind.SAGA,
            reference=op.saga_id,
            transfer_id=op.transfer_id,
        ),
    )
    status = StepStatus.APPLIED if row is not None else StepStatus.REFUSED
    step = StepState(
        op.step_id,
        status.value,
        row.id if row is not None else None,
        op.amount,
        None if row is not None else outcome.result.value,
        new={
            "step_id": op.step_id,
            "saga_id": op.saga_id,
            "origin_region": op.origin_region,
            "status": status.value,
            "transfer_id": row.id if row is not None else None,
            "amount": op.amount,
            "reason": None if row is not None else outcome.result.value,
        },
    )
    state.steps[op.step_id] = step
    if row is None:
        # Refused for good: the refusal is recorded, so a late copy of this step is refused too
        # and the source may safely void its hold.
        return _step_refusal(outcome.result, step)
    return Outcome(Result.OK, _step_view(step, op.saga_id), Effect.CREATED, row.id)


def cancel_step(state: BatchState, op: CancelStep) -> Outcome:
    step = state.steps.get(op.step_id)
    if step is None:
        step = StepState(
            op.step_id,
            StepStatus.CANCELLED.value,
            None,
            op.amount,
            Result.SAGA_STEP_CANCELLED.value,
            new={
                "step_id": op.step_id,
                "saga_id": op.saga_id,
                "origin_region": op.origin_region,
                "status": StepStatus.CANCELLED.value,
                "transfer_id": None,
                "amount": op.amount,
                "reason": Result.SAGA_STEP_CANCELLED.value,
            },
        )
        state.steps[op.step_id] = step
    return Outcome(Result.OK, _step_view(step, op.saga_id), transfer_id=step.transfer_id)

"""The saga orchestrator: drives a cross-region transfer from its hold to its end.

docs/architecture.md fixes the steps: (1) hold at the source, (2) credit at the destination by a
step id derived from the saga id, (3) post the hold; the compensation voids it. Step 1 is
decided by the batch that starts the saga (``saga_rules.start_saga``); this module runs steps 2
and 3.

What makes it safe:

- Every durable fact lives in a database, never only here. The saga's row changes in the same
  transaction as the hold it describes; the destination records step 2's outcome (applied,
  refused or cancelled) in the transaction that decides it, and answers every later call for
  that step id with the same outcome. So a driver that dies anywhere is replaced by one that
  asks the destination again and gets the truth.
- The source voids only when the destination has durably said step 2 will never apply: refused,
  or cancelled by us past the deadline. An unknown outcome (timeout, cut link, 5xx) is retried,
  never guessed.
- One node drives a saga at a time, by a lease in the saga's row (runtime.sagas); a crashed
  driver's lease runs out and the recovery worker (on any node, or the same node restarted)
  resumes the saga. Two drivers at once would still be safe (every call is idempotent and the
  destination decides step 2 or its cancel exactly once), only wasteful.
- Every wait is bounded: each call by ``step_timeout_ms``, retries by jittered exponential
  backoff up to ``retry_backoff_cap_ms``, step 2's retries by the saga's deadline, the number of
  sagas driven at once by ``running_max``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec

from ledger_node import answers
from ledger_node.batcher import Batcher
from ledger_node.errors import LedgerError
from ledger_node.observability import (
    SAGA_OUTCOMES,
    SAGA_SECONDS,
    SAGA_STEP_CALL_SECONDS,
    SAGA_STEP_ERRORS,
    SAGAS_OVERDUE,
    SAGAS_RUNNING,
)
from ledger_node.operations import Effect, FinishSaga, Flow
from region_router.errors import RouterError
from region_router.router import RegionRouter
from runtime.sagas import DATABASE_ERRORS, CrashPoints, SagaConfig, SagaRunner, backoff_ms
from wire.results import Result

log = logging.getLogger("regiongate.ledger.saga")

DEADLINE_REASON = Result.DEADLINE_EXCEEDED.value

CLAIM = """
UPDATE sagas SET lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond'
WHERE id = $1 AND status = 'held'
  AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now())
RETURNING id, debit_account_id, credit_account_id, credit_region, amount, currency,
          hold_transfer_id, deadline_at, attempts, last_error, created_at
"""

RECORD_ATTEMPT = """
UPDATE sagas SET attempts = attempts + 1, last_error = $3,
       next_attempt_at = now() + $4 * interval '1 millisecond',
       lease_until = now() + ($4 + $5) * interval '1 millisecond'
WHERE id = $1 AND status = 'held' AND lease_owner = $2
"""

OVERDUE_GRACE_S = 30
COUNT_OVERDUE = """
SELECT count(*) FROM sagas
WHERE status = 'held' AND deadline_at < now() - $1 * interval '1 second'
"""

RELEASE = """
UPDATE sagas SET lease_until = now() WHERE lease_owner = $1 AND status = 'held'
"""

DUE = """
SELECT id FROM sagas
WHERE status = 'held' AND next_attempt_at <= now()
  AND (lease_until IS NULL OR lease_until < now())
ORDER BY next_attempt_at LIMIT $1
"""

_decode = msgspec.json.Decoder()

CRASH_AT_ENV = "REGIONGATE_SAGA_CRASH_AT"
CRASH_POINTS = CrashPoints(CRASH_AT_ENV, frozenset({"hold", "answer", "finish"}))


class Verdict(enum.Enum):
    APPLIED = "applied"
    """The destination applied step 2: go forward and post the hold."""
    NEVER = "never"
    """The destination refused step 2 or cancelled it, durably: void the hold."""
    UNKNOWN = "unknown"
    """No answer, or not one that says either: ask again later."""


@dataclass(frozen=True, slots=True)
class StepAnswer:
    verdict: Verdict
    detail: str | None
    """For NEVER, the reason kept on the saga; for UNKNOWN, what went wrong (last_error)."""
    credit_transfer_id: str | None = None


def step_path(saga_id: str, action: str) -> str:
    return f"/v1/saga-steps/{saga_id}/{action}"


def read_answer(status: int, body: bytes, cancel: bool) -> StepAnswer:
    """What a destination's answer means for the saga. Only a step record (step_status) is a
    durable answer; anything else (a proxy's 502, a 401 after a bad key rotation, a validation
    error) says nothing about whether step 2 applied, so it is UNKNOWN and retried."""
    try:
        payload = _decode.decode(body) if body else None
    except msgspec.DecodeError:
        payload = None
    step_status = payload.get("step_status") if isinstance(payload, dict) else None
    if step_status == "applied" and status in (200, 201):
        return StepAnswer(Verdict.APPLIED, None, payload.get("transfer_id"))
    if step_status == "cancelled":
        return StepAnswer(Verdict.NEVER, DEADLINE_REASON)
    if step_status == "refused":
        return StepAnswer(Verdict.NEVER, str(payload.get("code") or "refused"))
    action = "cancel" if cancel else "credit"
    return StepAnswer(Verdict.UNKNOWN, f"{action}: HTTP {status}")


class SagaDriver:
    """Drives money sagas on the shared runner (runtime.sagas): this class knows the steps."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        batcher: Batcher,
        router: RegionRouter,
        region: str,
        config: SagaConfig,
        owner: str,
    ) -> None:
        self._pool = pool
        self._batcher = batcher
        self._router = router
        self._region = region
        self._config = config
        self.owner = owner
        self.runner = SagaRunner(
            name="saga",
            config=config,
            drive_one=self._drive,
            due=self._due,
            release=self._release,
            after_pass=self._count_overdue,
        )
        self.has_room = self.runner.has_room
        self.drive = self.runner.drive
        self.wait = self.runner.wait
        self.start = self.runner.start
        self.stop = self.runner.stop
        self.recover_due = self.runner.recover_due
        SAGAS_RUNNING.set_function(lambda: self.runner.running)

    @property
    def running(self) -> int:
        return self.runner.running

    async def _due(self, limit: int) -> list[str]:
        async with self._pool.acquire() as connection:
            return [row["id"] for row in await connection.fetch(DUE, limit)]

    async def _release(self) -> None:
        async with self._pool.acquire() as connection:
            await connection.execute(RELEASE, self.owner)

    async def _count_overdue(self) -> None:
        async with self._pool.acquire() as connection:
            SAGAS_OVERDUE.set(await connection.fetchval(COUNT_OVERDUE, OVERDUE_GRACE_S))

    async def _drive(self, saga_id: str, started: Mapping | None) -> dict | None:
        saga = started
        if saga is None:
            try:
                async with self._pool.acquire() as connection:
                    saga = await connection.fetchrow(
                        CLAIM, saga_id, self.owner, self._config.lease_ms
                    )
            except DATABASE_ERRORS as exc:
                log.warning("saga %s: cannot claim it now (%s); recovery will retry", saga_id, exc)
                return None
        if saga is None:
            return None  # already ended, or another node holds its lease
        attempt = saga["attempts"]
        last_error = saga.get("last_error")
        CRASH_POINTS.reached("hold")
        while True:
            cancel = datetime.now(UTC) >= saga["deadline_at"]
            answer = await self._call_step(saga, cancel)
            if answer.verdict is not Verdict.UNKNOWN:
                CRASH_POINTS.reached("answer")
                final = await self._finish(saga, answer)
                CRASH_POINTS.reached("finish")
                if final is not None:
                    # What the row says too: the caller shows the saga without reading it back.
                    final.update(attempts=attempt, last_error=last_error)
                return final
            SAGA_STEP_ERRORS.labels(saga["credit_region"]).inc()
            attempt += 1
            last_error = answer.detail
            delay_ms = backoff_ms(self._config, attempt)
            if not cancel:
                # Do not sleep through the deadline: the cancel should follow it promptly.
                remaining_ms = (saga["deadline_at"] - datetime.now(UTC)).total_seconds() * 1000
                delay_ms = max(0.0, min(delay_ms, remaining_ms))
            if not await self._record_attempt(saga_id, answer.detail, delay_ms):
                return None
            await asyncio.sleep(delay_ms / 1000)

    async def _call_step(self, saga: Mapping, cancel: bool) -> StepAnswer:
        body = {
            "origin_region": self._region,
            "credit_account_id": saga["credit_account_id"],
            "amount": saga["amount"],
            "currency": saga["currency"],
        }
        action = "cancel" if cancel else "credit"
        started = time.perf_counter()
        try:
            response = await self._router.call_in_region(
                saga["credit_region"],
                "POST",
                step_path(saga["id"], action),
                body,
                idempotency_key=saga["id"],
            )
        except (RouterError, TimeoutError) as exc:
            answer = StepAnswer(Verdict.UNKNOWN, f"{type(exc).__name__}: {exc}"[:500])
        else:
            answer = read_answer(response.status, response.body, cancel)
        SAGA_STEP_CALL_SECONDS.labels(saga["credit_region"], action, answer.verdict.value).observe(
            time.perf_counter() - started
        )
        return answer

    async def _record_attempt(self, saga_id: str, detail: str | None, delay_ms: float) -> bool:
        """Keep the attempt on the saga's row and renew the lease; False if the lease is lost."""
        try:
            async with self._pool.acquire() as connection:
                status = await connection.execute(
                    RECORD_ATTEMPT, saga_id, self.owner, detail, delay_ms, self._config.lease_ms
                )
        except DATABASE_ERRORS as exc:
            # The database is away (a restart, say): keep driving on the lease we hold. If it
            # runs out meanwhile another node may drive the saga too, which is safe.
            log.warning("saga %s: cannot record attempt (%s)", saga_id, exc)
            return True
        return status.endswith(" 1")

    async def _finish(self, saga: Mapping, answer: StepAnswer) -> dict | None:
        """Post the hold (step 3) or void it (the compensation). Retried within one lease; past
        it, the recovery worker asks the destination again and finishes the same way."""
        applied = answer.verdict is Verdict.APPLIED
        operation = FinishSaga(
            saga_id=saga["id"],
            hold_transfer_id=saga["hold_transfer_id"],
            flow=Flow.POST if applied else Flow.VOID,
            credit_transfer_id=answer.credit_transfer_id if applied else None,
            reason=None if applied else answer.detail,
            debit_account_id=saga["debit_account_id"],
            credit_region=saga["credit_region"],
            currency=saga["currency"],
        )
        give_up_at = time.monotonic() + self._config.lease_ms / 1000
        attempt = 0
        while True:
            try:
                outcome = await self._batcher.submit(
                    operation,
                    idempotency_key=None,
                    request_hash=b"",
                    name="saga-finish",
                    timeout_s=self._config.step_timeout_ms / 1000,
                )
            except (LedgerError, TimeoutError) as exc:
                attempt += 1
                if time.monotonic() >= give_up_at:
                    log.warning("saga %s: finish failed (%s); recovery will retry", saga["id"], exc)
                    return None
                await asyncio.sleep(backoff_ms(self._config, attempt) / 1000)
                continue
            break
        status, body = answers.answer(outcome)
        if outcome.result is not Result.OK:
            log.error("saga %s: finish refused: %s", saga["id"], body[:300])
            return None
        if status != Effect.DONE.value or outcome.transfer_id is None:
            return None  # another driver ended it first; its row says how
        label = "completed" if applied else "compensated"
        SAGA_OUTCOMES.labels(label, saga["credit_region"]).inc()
        finished_at = datetime.fromisoformat(_decode.decode(body)["finished_at"])
        elapsed_s = (finished_at - saga["created_at"]).total_seconds()
        SAGA_SECONDS.labels(label).observe(max(0.0, elapsed_s))
        return {
            "status": label,
            "finish_transfer_id": outcome.transfer_id,
            "credit_transfer_id": operation.credit_transfer_id,
            "reason": operation.reason,
            "finished_at": finished_at,
        }

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
- One node drives a saga at a time, by a lease in the saga's row; a crashed driver's lease runs
  out and the recovery worker (on any node, or the same node restarted) resumes the saga. Two
  drivers at once would still be safe (every call is idempotent and the destination decides
  step 2 or its cancel exactly once), only wasteful.
- Every wait is bounded: each call by ``step_timeout_ms``, retries by jittered exponential
  backoff up to ``retry_backoff_cap_ms``, step 2's retries by the saga's deadline, the number of
  sagas driven at once by ``running_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import msgspec

from ledger_node import answers
from ledger_node.batcher import Batcher
from ledger_node.config import SagaConfig
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

# Fault injection for the crash tests: the process kills itself (SIGKILL, as kill -9 would) at
# the named step boundary. Read once at start; production never sets it.
CRASH_AT_ENV = "REGIONGATE_SAGA_CRASH_AT"
CRASH_POINTS = frozenset({"hold", "answer", "finish"})
_CRASH_AT = os.environ.get(CRASH_AT_ENV)


def _crash_point(name: str) -> None:
    if _CRASH_AT == name:
        log.warning("fault injection: killing this process at step boundary %r", name)
        os.kill(os.getpid(), signal.SIGKILL)


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


def new_owner_id(region: str) -> str:
    return f"{region}:{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def backoff_ms(config: SagaConfig, attempt: int) -> float:
    """Full jitter over an exponential cap (AWS architecture blog's "full jitter")."""
    cap = min(config.retry_backoff_cap_ms, config.retry_backoff_base_ms * 2 ** min(attempt, 30))
    return random.uniform(config.retry_backoff_base_ms / 2, cap)


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
        self._running: dict[str, asyncio.Task] = {}
        self._recovery: asyncio.Task | None = None
        SAGAS_RUNNING.set_function(lambda: len(self._running))

    @property
    def running(self) -> int:
        return len(self._running)

    def has_room(self) -> bool:
        return len(self._running) < self._config.running_max

    def start(self) -> None:
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover_loop(), name="saga-recovery"
        )

    async def stop(self) -> None:
        """Stop driving; hand this node's sagas over at once (their leases end now)."""
        tasks = [task for task in (self._recovery, *self._running.values()) if task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            async with self._pool.acquire() as connection:
                await connection.execute(RELEASE, self.owner)

    def drive(self, saga_id: str, started: Mapping | None = None) -> asyncio.Task | None:
        """Drive a saga in the background (once per process); None when at running_max.

        started is the row of a saga this process has just started: the starting batch gave
        it the lease, so driving it needs no claim (one database round trip fewer per saga).
        The task's result is the saga's final fields when this process ended it, else None."""
        task = self._running.get(saga_id)
        if task is not None:
            return task
        if not self.has_room():
            return None
        task = asyncio.get_running_loop().create_task(
            self._drive(saga_id, started), name=f"saga {saga_id}"
        )
        self._running[saga_id] = task
        task.add_done_callback(lambda done: self._ended(saga_id, done))
        return task

    def _ended(self, saga_id: str, task: asyncio.Task) -> None:
        self._running.pop(saga_id, None)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a fault the saga expects: say so loudly. The saga stays held; its
            # lease runs out and recovery drives it again (at most once per lease).
            log.error("saga %s: driver failed", saga_id, exc_info=task.exception())

    async def wait(
        self, saga_id: str, timeout_s: float, started: Mapping | None = None
    ) -> dict | None:
        """Wait up to timeout_s for this process to end the saga (never cancels it); its final
        fields if it ended here in time, else None (then the saga's row says where it is)."""
        task = self.drive(saga_id, started)
        if task is None or timeout_s <= 0:
            return None
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def recover_due(self) -> int:
        """Resume unfinished sagas whose lease ran out; return how many were taken up."""
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(DUE, self._config.recovery_batch_max)
        started = 0
        for row in rows:
            if row["id"] not in self._running and self.drive(row["id"]) is not None:
                started += 1
        return started

    async def _recover_loop(self) -> None:
        interval_s = self._config.recovery_interval_ms / 1000
        while True:
            try:
                resumed = await self.recover_due()
                if resumed:
                    log.info("resumed %d unfinished sagas", resumed)
                async with self._pool.acquire() as connection:
                    SAGAS_OVERDUE.set(await connection.fetchval(COUNT_OVERDUE, OVERDUE_GRACE_S))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("saga recovery pass failed: %s", exc)
            await asyncio.sleep(interval_s)

    async def _drive(self, saga_id: str, started: Mapping | None) -> dict | None:
        saga = started
        if saga is None:
            try:
                async with self._pool.acquire() as connection:
                    saga = await connection.fetchrow(
                        CLAIM, saga_id, self.owner, self._config.lease_ms
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("saga %s: cannot claim it now (%s); recovery will retry", saga_id, exc)
                return None
        if saga is None:
            return None  # already ended, or another node holds its lease
        attempt = saga["attempts"]
        last_error = saga.get("last_error")
        _crash_point("hold")
        while True:
            cancel = datetime.now(UTC) >= saga["deadline_at"]
            answer = await self._call_step(saga, cancel)
            if answer.verdict is not Verdict.UNKNOWN:
                _crash_point("answer")
                final = await self._finish(saga, answer)
                _crash_point("finish")
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
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
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

"""Group concurrent operations into batches that commit together (group commit for money).

A hot account (the house takes a share of every bet) would serialise a one-transaction-per-
request ledger on its row lock. Here one writer takes every operation queued while the previous
batch committed (up to ``batch.size_max``), locks each touched account once, decides each
operation on its own in arrival order, writes all of it in one statement and commits once. Under
load batches grow by themselves; at rest a lone request is committed at once.

Bounds: the queue (``queue_depth_max``, then 503 at once), the batch (``size_max``), the wait for
a batch to fill (``wait_us_max``), and retries after a lost race (``retry_attempts_max``).

What sets a batch's throughput, and the designs measured and not kept (deciding batches ahead,
answering in chunks), are in docs/decisions/0004.

Over 400 lines: the queue, its writers and one batch's run are one state machine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ledger_node import batch_write, store
from ledger_node.config import BatchConfig
from ledger_node.decide import decide
from ledger_node.errors import (
    LedgerError,
    OverloadedError,
    RetryableDatabaseError,
    map_database_error,
)
from ledger_node.invariants import check_batch, ensure
from ledger_node.observability import (
    BATCH_DECIDE_SECONDS,
    BATCH_LOCK_AND_READ_SECONDS,
    BATCH_RETRIES,
    BATCH_SECONDS,
    BATCH_SIZE,
    BATCH_WRITE_SECONDS,
    QUEUE_DEPTH,
)
from ledger_node.operations import (
    BatchState,
    CancelStep,
    CreateTransfer,
    CreditStep,
    FinishSaga,
    Operation,
    Outcome,
    PlaceBet,
    ResolvePending,
    Rollback,
    SettleWin,
    StartSaga,
    Submission,
)
from wire.ids import house_account_id, transit_account_id
from wire.results import Result

log = logging.getLogger("regiongate.ledger.batcher")

RETRY_BACKOFF_BASE_MS = 2
RETRY_BACKOFF_CAP_MS = 100
CONNECTION_ACQUIRE_TIMEOUT_S = 5.0
PREPARED_WRITES_MAX = 4096


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    operations: int = 0
    retries: int = 0
    failed_batches: int = 0
    batch_size_max_seen: int = 0
    batch_seconds_total: float = 0.0


class Batcher:
    def __init__(
        self, *, pool: asyncpg.Pool, region: str, config: BatchConfig, outbox: bool = True
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._region = region
        self._config = config
        self._queue: collections.deque[Submission] = collections.deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # The (backend pid, write parts) whose session holds that shape of the write prepared;
        # a stale pid costs one retried batch. Replaced connections leave pids behind, so past
        # a bound it is emptied: each live session then checks pg_prepared_statements again.
        self._prepared: set[tuple[int, int]] = set()
        self.stats = BatchStats()
        QUEUE_DEPTH.set_function(lambda: len(self._queue))

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(
        self,
        operation: Operation,
        *,
        idempotency_key: str | None,
        request_hash: bytes,
        name: str,
        timeout_s: float | None = None,
    ) -> asyncio.Future[Outcome]:
        """Queue an operation; the future resolves once its batch has committed (or failed), or
        fails with TimeoutError after timeout_s. A timed-out operation may still commit: its
        caller must treat the outcome as unknown and retry with the same idempotency key.

        Enqueues synchronously, so operations submitted one after another without an await in
        between are decided in exactly that order."""
        if self._stopping:
            raise OverloadedError("ledger node is shutting down", retry_after_s=1)
        if len(self._queue) >= self._config.queue_depth_max:
            raise OverloadedError(
                f"batch queue at its bound of {self._config.queue_depth_max}", retry_after_s=1
            )
        # The loop as of start(): asyncio.get_running_loop() costs a getpid system call each
        # time on Python 3.11.
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        submission = Submission(operation, idempotency_key, request_hash, name, future)
        if timeout_s is not None:
            submission.timer = loop.call_later(timeout_s, _time_out, future)
        self._queue.append(submission)
        self._wakeup.set()
        return future

    def start(self) -> None:
        ensure(not self._tasks, "batcher started twice")
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"ledger-batch-writer-{index}")
            for index in range(self._config.writers)
        ]

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._stopping = True
        self._wakeup.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def _run(self) -> None:
        # A writer keeps its connection from one batch to the next while work is queued (a
        # pool acquire and release per batch was 3% of the node's CPU), and for idle_hold_ms
        # after the queue runs dry; it gives it back after that, or when a batch fails, so an
        # idle node holds none.
        connection: asyncpg.Connection | None = None
        hold_s = self._config.idle_hold_ms / 1000
        try:
            while True:
                if not self._queue:
                    if connection is not None:
                        if hold_s and not self._stopping and await self._work_within(hold_s):
                            continue
                        await self._release(connection)
                        connection = None
                        # Work queued while the release awaited has set the wakeup already:
                        # look again before clearing it, or that work would wait forever.
                        continue
                    if self._stopping:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if self._config.wait_us_max and len(self._queue) < self._config.size_max:
                    await asyncio.sleep(self._config.wait_us_max / 1_000_000)
                count = min(len(self._queue), self._config.size_max)
                if count == 0:  # another writer took the queue while this one waited
                    continue
                batch = [self._queue.popleft() for _ in range(count)]
                held, connection = connection, None  # _execute releases it if it fails
                try:
                    connection = await self._execute(batch, held)
                except Exception as exc:  # the loop must survive anything
                    log.exception("batch loop error")
                    _fail_all(batch, map_database_error(exc), exc)  # those not failed yet
        finally:
            if connection is not None:
                await self._release(connection)

    async def _work_within(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for work (or stop); whether any is queued."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wakeup.wait()
        return bool(self._queue)

    async def _release(self, connection: asyncpg.Connection) -> None:
        """Back to the pool, ending first the next batch's transaction (empty: no statement has
        run in it) here, since asyncpg's pool reports a connection released in a transaction
        as an error. The pool replaces a closed connection."""
        await _roll_back(connection)
        try:
            await self._pool.release(connection, timeout=CONNECTION_ACQUIRE_TIMEOUT_S)
        except Exception:  # a connection that cannot even be reset is closed by the pool
            log.warning("could not release a batch connection", exc_info=True)

    async def _execute(
        self, batch: list[Submission], connection: asyncpg.Connection | None
    ) -> asyncpg.Connection | None:
        """Run one batch, retrying lost races; returns the connection to keep for the next."""
        attempt = 0
        started = time.perf_counter()
        if connection is not None and not _usable(connection):
            # Ended while it was held (idle_hold_ms, or between batches): by the server, a
            # restart, the network. Nothing of this batch was sent on it, so take another
            # rather than fail the batch.
            await self._release(connection)
            connection = None
        while True:
            try:
                if connection is None:
                    connection = await self._pool.acquire(timeout=CONNECTION_ACQUIRE_TIMEOUT_S)
                try:
                    outcomes = await self._run_once(connection, batch)
                except BaseException:
                    await _roll_back(connection)
                    raise
            except Exception as exc:
                if connection is not None:
                    await self._release(connection)  # never reuse one that just failed
                    connection = None
                error = map_database_error(exc)
                if isinstance(error, RetryableDatabaseError) and (
                    attempt < self._config.retry_attempts_max
                ):
                    attempt += 1
                    self.stats.retries += 1
                    BATCH_RETRIES.inc()
                    cap_ms = min(RETRY_BACKOFF_CAP_MS, RETRY_BACKOFF_BASE_MS * 2**attempt)
                    await asyncio.sleep(random.uniform(0, cap_ms) / 1000)
                    continue
                self.stats.failed_batches += 1
                if not isinstance(exc, LedgerError | asyncpg.PostgresError | OSError):
                    log.exception("batch of %d failed with an unexpected error", len(batch))
                else:
                    log.warning("batch of %d failed: %s", len(batch), error)
                _fail_all(batch, error, exc)
                return None
            except BaseException:  # cancelled: give the connection back on the way out
                if connection is not None:
                    await self._release(connection)
                raise
            self.stats.batches += 1
            self.stats.operations += len(batch)
            self.stats.batch_size_max_seen = max(self.stats.batch_size_max_seen, len(batch))
            self.stats.batch_seconds_total += time.perf_counter() - started
            BATCH_SIZE.observe(len(batch))
            BATCH_SECONDS.observe(time.perf_counter() - started)
            for submission, outcome in zip(batch, outcomes, strict=True):
                if submission.timer is not None:
                    submission.timer.cancel()
                if not submission.future.done():
                    submission.future.set_result(outcome)
            return connection

    async def _run_once(
        self, connection: asyncpg.Connection, batch: list[Submission]
    ) -> list[Outcome]:
        """Decide and commit one batch in two round trips (see ledger_node.store)."""
        operations = [submission.operation for submission in batch]
        state = BatchState(now=datetime.now(UTC), region=self._region, accounts={})
        account_ids, pending_ids, bet_keys, saga_ids, step_ids = _touched(self._region, operations)
        # Which accounts a hold or a rollback touches never changes, so it is read before the
        # transaction; only batches with such operations pay for it.
        unknown = [op.pending_id for op in operations if isinstance(op, ResolvePending)]
        if unknown:
            account_ids.update(await store.pending_accounts(connection, unknown))
        rollback_accounts = [op.account_id for op in operations if isinstance(op, Rollback)]
        if rollback_accounts:
            currencies = await store.account_currencies(connection, rollback_accounts)
            account_ids.update(house_account_id(self._region, c) for c in currencies.values())
        ordered_ids = sorted(account_ids)
        await store.open_transaction(connection)
        keys = [s.idempotency_key for s in batch if s.idempotency_key is not None]
        locking = time.perf_counter()
        await store.lock_and_read(
            connection, state, ordered_ids, keys, pending_ids, bet_keys, saga_ids, step_ids
        )
        deciding = time.perf_counter()
        BATCH_LOCK_AND_READ_SECONDS.observe(deciding - locking)
        # The batch's time is read once its locks are held, so for any one account the times of
        # its transfers follow their commit order (balance-as-of relies on it).
        state.now = datetime.now(UTC)
        before = {account_id: a.snapshot() for account_id, a in state.accounts.items()}

        outcomes = [_decide_with_key(state, submission) for submission in batch]
        check_batch(state, before)
        writing = time.perf_counter()
        BATCH_DECIDE_SECONDS.observe(writing - deciding)
        # The message also opens the next batch's transaction. A writer whose queue runs dry
        # rolls that empty transaction back as it gives the connection back (_release): off
        # the path of any request.
        if batch_write.has_writes(state):
            # The statement checks its own row counts (regiongate_expect); on any error the
            # server skips the COMMIT that follows it in the message, and _execute rolls back.
            parts, message = batch_write.write_and_commit_message(state, outbox=self._outbox)
            prepared = (connection.get_server_pid(), parts)
            if prepared not in self._prepared:
                # Once per session and shape of write; a prepared statement outlives the
                # transaction it was prepared in, whatever becomes of that.
                await _prepare_write(connection, parts)
                if len(self._prepared) >= PREPARED_WRITES_MAX:
                    self._prepared.clear()
                self._prepared.add(prepared)
            try:
                await store.commit_and_open(connection, message)
            except asyncpg.InvalidSQLStatementNameError:
                # A new session that reused a backend's pid: prepare again on the retry.
                self._prepared.discard(prepared)
                raise
        else:
            await store.commit_and_open(connection)
        BATCH_WRITE_SECONDS.observe(time.perf_counter() - writing)
        return outcomes


def _touched(
    region: str, operations: Iterable[Operation]
) -> tuple[set[str], list[str], list[tuple[str, str]], list[str], list[str]]:
    """What a batch must lock and read: accounts, holds, bet references, sagas, saga steps."""
    account_ids: set[str] = set()
    pending_ids: list[str] = []
    bet_keys: list[tuple[str, str]] = []
    saga_ids: list[str] = []
    step_ids: list[str] = []
    for op in operations:
        if isinstance(op, CreateTransfer):
            account_ids.add(op.debit_account_id)
            account_ids.add(op.credit_account_id)
        elif isinstance(op, PlaceBet | SettleWin):
            account_ids.add(op.account_id)
            account_ids.add(op.house_account_id)
            if isinstance(op, PlaceBet):
                bet_keys.append((op.account_id, op.reference))
        elif isinstance(op, Rollback):
            account_ids.add(op.account_id)
            bet_keys.append((op.account_id, op.reference))
        elif isinstance(op, ResolvePending):
            pending_ids.append(op.pending_id)
        elif isinstance(op, StartSaga):
            account_ids.add(op.debit_account_id)
            account_ids.add(transit_account_id(region, op.credit_region, op.currency))
        elif isinstance(op, FinishSaga):
            # A saga knows its hold's accounts, so its batch needs no read before the locks.
            account_ids.add(op.debit_account_id)
            account_ids.add(transit_account_id(region, op.credit_region, op.currency))
            pending_ids.append(op.hold_transfer_id)
            saga_ids.append(op.saga_id)
        elif isinstance(op, CreditStep | CancelStep):
            # Step 2 and its cancel lock the same transit account, so they never interleave.
            account_ids.add(transit_account_id(region, op.origin_region, op.currency))
            account_ids.add(op.credit_account_id)
            step_ids.append(op.step_id)
    return account_ids, pending_ids, bet_keys, saga_ids, step_ids


def _decide_with_key(state: BatchState, submission: Submission) -> Outcome:
    key = submission.idempotency_key
    if key is not None:
        stored = state.stored_keys.get(key)
        if stored is not None:
            if stored.request_hash != submission.request_hash:
                return _conflict()
            return Outcome(
                Result(stored.result),
                transfer_id=stored.transfer_id,
                replayed=True,
                answer=(stored.status_code, stored.body),
            )
        earlier = state.new_keys.get(key)
        if earlier is not None:
            request_hash, outcome, _ = earlier
            if request_hash != submission.request_hash:
                return _conflict()
            return dataclasses.replace(outcome, replayed=True)
    outcome = decide(state, submission.operation)
    if key is not None:
        state.new_keys[key] = (submission.request_hash, outcome, submission.name)
    return outcome


def _conflict() -> Outcome:
    return Outcome(Result.IDEMPOTENCY_CONFLICT)


def _fail_all(batch: list[Submission], error: LedgerError, cause: BaseException) -> None:
    if error is not cause:
        error.__cause__ = cause
    for submission in batch:
        if submission.timer is not None:
            submission.timer.cancel()
        if not submission.future.done():
            submission.future.set_exception(error)


async def _prepare_write(connection: asyncpg.Connection, parts: int) -> None:
    """PREPARE the batch write with these parts in this connection's session, unless it already
    is (an earlier attempt may have prepared it and then failed before this process noted
    it)."""
    if not await connection.fetchval(batch_write.write_is_prepared(parts)):
        await connection.execute(batch_write.prepare_write(parts))


def _usable(connection: asyncpg.Connection) -> bool:
    """Whether a connection this writer holds can still run a batch. One whose session ended
    is closed; asyncpg's pool then also takes it back at once, after which every call on it,
    is_closed() included, raises InterfaceError."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _roll_back(connection: asyncpg.Connection) -> None:
    """End a failed batch's transaction, or the next batch's that never came; a connection that
    cannot even do that is closed, and the pool replaces it."""
    if not _usable(connection) or not connection.is_in_transaction():
        return
    try:
        await connection.execute(store.TransactionControl.ROLLBACK.value)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        connection.terminate()


def _time_out(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError("the batch did not finish in time"))

"""What every saga of this project shares: the bounds (SagaConfig), leases held by an owner id,
jittered backoff, fault-injection points, and the runner that drives each saga in a task of its
own (at most ``running_max`` at once) and resumes, on a schedule, every saga whose lease ran out.

A saga's durable state is a row in its orchestrator's database; the runner holds nothing that a
crash may lose. The money saga (ledger_node.saga) and the username claim (identity.saga) are
its two users: each supplies how to drive one saga, how to find the due ones and how to hand
its leases over when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import asyncpg
from msgspec import Meta, Struct

from wire.errors import ConfigError

log = logging.getLogger("regiongate.sagas")

DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class SagaConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds of a saga (docs/architecture.md). Every wait and retry is finite: a step is
    retried with jittered backoff until deadline_ms, then cancelled; the cancel is retried at
    the backoff cap until the other side answers (it must, for the saga to end)."""

    deadline_ms: Annotated[int, Meta(ge=100, le=86_400_000)] = 30_000
    """From the first step to the cancel: past it, the saga stops retrying and cancels."""
    step_timeout_ms: Annotated[int, Meta(ge=10, le=120_000)] = 3_000
    """One call to another region (several WAN round trips at most)."""
    retry_backoff_base_ms: Annotated[int, Meta(ge=1, le=60_000)] = 50
    retry_backoff_cap_ms: int = 2_000
    lease_ms: Annotated[int, Meta(ge=100, le=600_000)] = 5_000
    """How long a node owns a saga it drives; another node (or this one restarted) takes over
    an unfinished saga once its lease has run out."""
    recovery_interval_ms: Annotated[int, Meta(ge=10, le=600_000)] = 1_000
    """How often a node looks for unfinished sagas whose lease ran out."""
    recovery_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 200
    running_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 4_096
    """Sagas one node process drives at once; past it, new ones get 503."""
    wait_ms: Annotated[int, Meta(ge=0, le=120_000)] = 2_000
    """How long a request waits for its saga to end before answering 202. Keep it below the
    gateway's attempt_timeout_ms, or the gateway gives up on the answer first."""

    def __post_init__(self) -> None:
        if not self.retry_backoff_base_ms <= self.retry_backoff_cap_ms <= 600_000:
            raise ConfigError(
                f"saga.retry_backoff_cap_ms must be in [{self.retry_backoff_base_ms}, 600000], "
                f"got {self.retry_backoff_cap_ms}"
            )


def new_owner_id(region: str) -> str:
    """Who holds a lease: this region, host and process, and a random tail."""
    return f"{region}:{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def backoff_ms(config: SagaConfig, attempt: int) -> float:
    """Full jitter over an exponential cap (AWS architecture blog's "full jitter")."""
    cap = min(config.retry_backoff_cap_ms, config.retry_backoff_base_ms * 2 ** min(attempt, 30))
    return random.uniform(config.retry_backoff_base_ms / 2, cap)


class CrashPoints:
    """Fault injection for the crash tests: the process kills itself (SIGKILL, as kill -9 would)
    at the step boundary its environment variable names. Read once at import; production
    never sets it."""

    def __init__(self, variable: str, points: frozenset[str]) -> None:
        self.variable = variable
        self.points = points
        self._at = os.environ.get(variable)

    def reached(self, name: str) -> None:
        if name not in self.points:
            raise ValueError(f"unknown crash point {name!r}")
        if self._at == name:
            log.warning("fault injection: killing this process at step boundary %r", name)
            os.kill(os.getpid(), signal.SIGKILL)


DriveOne = Callable[[str, Mapping | None], Awaitable[Any]]


class SagaRunner:
    """Drives sagas in background tasks, one per saga and process, and resumes due ones.

    ``drive_one(saga_id, started)`` drives a saga to its end or until it loses its lease, and
    returns what the caller of ``wait`` gets; ``due(limit)`` lists ids whose lease ran out;
    ``release()`` ends this process's leases (at stop, so others take over at once);
    ``after_pass()`` runs after each recovery pass (for gauges)."""

    def __init__(
        self,
        *,
        name: str,
        config: SagaConfig,
        drive_one: DriveOne,
        due: Callable[[int], Awaitable[list[str]]],
        release: Callable[[], Awaitable[None]],
        after_pass: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._name = name
        self._config = config
        self._drive_one = drive_one
        self._due = due
        self._release = release
        self._after_pass = after_pass
        self._running: dict[str, asyncio.Task] = {}
        self._recovery: asyncio.Task | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def has_room(self) -> bool:
        return len(self._running) < self._config.running_max

    def start(self) -> None:
        self._recovery = asyncio.get_running_loop().create_task(
            self._recover_loop(), name=f"{self._name}-recovery"
        )

    async def stop(self) -> None:
        """Stop driving; hand this process's sagas over at once (their leases end now)."""
        tasks = [task for task in (self._recovery, *self._running.values()) if task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*DATABASE_ERRORS):
            await self._release()

    def drive(self, saga_id: str, started: Mapping | None = None) -> asyncio.Task | None:
        """Drive a saga in the background (once per process); None when at running_max.

        started is the row of a saga this process has just started with its lease held, so
        driving it needs no claim (one database round trip fewer per saga)."""
        task = self._running.get(saga_id)
        if task is not None:
            return task
        if not self.has_room():
            return None
        task = asyncio.get_running_loop().create_task(
            self._drive_one(saga_id, started), name=f"{self._name} {saga_id}"
        )
        self._running[saga_id] = task
        task.add_done_callback(lambda done: self._ended(saga_id, done))
        return task

    def _ended(self, saga_id: str, task: asyncio.Task) -> None:
        self._running.pop(saga_id, None)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a fault the saga expects: say so loudly. The saga stays unfinished;
            # its lease runs out and recovery drives it again (at most once per lease).
            log.error("%s %s: driver failed", self._name, saga_id, exc_info=task.exception())

    async def wait(self, saga_id: str, timeout_s: float, started: Mapping | None = None) -> Any:
        """Wait up to timeout_s for this process to end the saga (never cancels it); what its
        driver returned if it ended here in time, else None (then its row says where it is)."""
        task = self.drive(saga_id, started)
        if task is None or timeout_s <= 0:
            return None
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def recover_due(self) -> int:
        """Resume unfinished sagas whose lease ran out; return how many were taken up."""
        started = 0
        for saga_id in await self._due(self._config.recovery_batch_max):
            if saga_id not in self._running and self.drive(saga_id) is not None:
                started += 1
        return started

    async def _recover_loop(self) -> None:
        interval_s = self._config.recovery_interval_ms / 1000
        while True:
            try:
                resumed = await self.recover_due()
                if resumed:
                    log.info("resumed %d unfinished %s sagas", resumed, self._name)
                if self._after_pass is not None:
                    await self._after_pass()
            except DATABASE_ERRORS as exc:
                log.warning("%s recovery pass failed: %s", self._name, exc)
            await asyncio.sleep(interval_s)

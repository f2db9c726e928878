"""What every regiongate service process shares: JSON logs on stderr, uvloop, a graceful stop on
SIGINT/SIGTERM, and ``workers`` processes sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

SHUTDOWN_TIMEOUT_S = 10.0


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str | None = None) -> None:
    from infra.telemetry import TraceIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(TraceIdFilter())
    logging.basicConfig(
        level=level or os.environ.get("REGIONGATE_LOG_LEVEL", "INFO"),
        handlers=[handler],
        force=True,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> None:
    """Run target(*args, reuse_port, worker_index) in this process, or in `workers` child
    processes that share the port, forwarding SIGINT/SIGTERM to them and waiting for all."""
    if workers == 1:
        target(*args, False, 0)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_child, args=(os.getpid(), target, (*args, True, index)))
        for index in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum, _frame):
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _child(parent_pid: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    """A worker that ends with its parent. Signals are forwarded to workers, but a parent that
    is killed outright (SIGKILL, the OOM killer) forwards nothing: its workers would go on
    serving the shared port, and a ledger node its supervisor believes dead would go on moving
    money. On Linux the kernel sends SIGTERM to the worker when the parent dies."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        return
    target(*args)

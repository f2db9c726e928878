"""What every regiongate service process shares: JSON logs on stderr, uvloop, a graceful stop on
SIGINT/SIGTERM, ``workers`` processes sharing one port through SO_REUSEPORT (a worker that dies
is replaced, within a bound), and an HTTP server that answers even a request it cannot parse
(a header too long, a broken request line) with a problem document rather than aiohttp's
``text/plain``."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from runtime.telemetry import WORKER_RESTARTS_ENV, TraceIdFilter

SHUTDOWN_TIMEOUT_S = 10.0


_encode_json = msgspec.json.Encoder().encode  # a third of json.dumps's time per line


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
        access = getattr(record, "access", None)
        if access is not None:  # an access line's fields, at the top level
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode_json(entry).decode()


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(TraceIdFilter())
    logging.basicConfig(
        level=level or os.environ.get("REGIONGATE_LOG_LEVEL", "INFO"),
        handlers=[handler],
        force=True,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


ProtocolProblem = Callable[[int, str], tuple[int, bytes]]
"""(status aiohttp chose, what was wrong) -> (status, problem+json body) for a request the
server could not parse: the services' own renderer, so both layers speak one vocabulary."""


class _ProblemRequestHandler(RequestHandler):
    protocol_problem: ProtocolProblem

    def handle_error(
        self,
        request,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or finish, as problem+json."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")
        if status >= 500:
            self.log_exception("error handling a request", exc_info=exc)
        else:  # a client's malformed request: its own mistake, not ours; the message is not
            # logged, since it can quote a header, and a header can hold a token
            logging.getLogger("regiongate.http").info(
                "refused a malformed request from %s (%d, %s)",
                request.remote,
                status,
                type(exc).__name__,
            )
        if isinstance(exc, LineTooLong):
            status = 431  # RFC 6585: Request Header Fields Too Large
        status, body = self.protocol_problem(status, str(message or exc or ""))
        response = web.Response(status=status, body=body, content_type="application/problem+json")
        response.force_close()
        return response


class _ProblemServer(Server):
    protocol_problem: ProtocolProblem

    def __call__(self) -> RequestHandler:
        handler = _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.protocol_problem = self.protocol_problem
        return handler


class ProblemAppRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable requests with a problem document.
    aiohttp has no hook for that answer, so the server it builds is given a subclass whose
    request handlers override ``handle_error`` (tests/test_bad_input.py pins the behaviour)."""

    def __init__(self, app: web.Application, *, protocol_problem: ProtocolProblem, **kwargs):
        super().__init__(app, **kwargs)
        self._protocol_problem = protocol_problem

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer  # same layout, one more method: no state is copied
        server.protocol_problem = self._protocol_problem
        return server


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


WORKER_RESTARTS_MAX = 5
"""Restarts of dead workers a service makes within WORKER_RESTART_WINDOW_S; one more means
something kills every worker (a bug, the OOM killer, a bad host), and the service exits 1 so
its supervisor (systemd, Kubernetes) decides, rather than restarting in a loop."""
WORKER_RESTART_WINDOW_S = 60.0

log = logging.getLogger("regiongate.serving")


def run_workers(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> None:
    """Run target(*args, reuse_port, worker_index) in this process, or in `workers` child
    processes that share the port, forwarding SIGINT/SIGTERM to them and waiting for all.

    A child that dies while the service is not stopping is replaced in its slot, with an error
    line, and the new worker exports the slot's restart count
    (``regiongate_worker_restarts_total``). Past WORKER_RESTARTS_MAX restarts within
    WORKER_RESTART_WINDOW_S the service stops every worker and exits 1 (decision 0003)."""
    if workers == 1:
        target(*args, False, 0)
        return
    context = multiprocessing.get_context("spawn")
    restarts_by_slot = dict.fromkeys(range(workers), 0)
    recent_restarts: list[float] = []
    stopping = False

    def start(index: int) -> multiprocessing.Process:
        process = context.Process(
            target=_child,
            args=(os.getpid(), target, (*args, True, index), restarts_by_slot[index]),
        )
        process.start()
        return process

    processes = {index: start(index) for index in range(workers)}

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for process in processes.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        multiprocessing.connection.wait([p.sentinel for p in processes.values()])
        for index, process in list(processes.items()):
            if process.is_alive() or stopping:
                continue
            now = time.monotonic()
            recent_restarts[:] = [t for t in recent_restarts if now - t < WORKER_RESTART_WINDOW_S]
            if len(recent_restarts) >= WORKER_RESTARTS_MAX:
                log.critical(
                    "worker %d (pid %d) exited with %s, and %d workers died within %.0f s: "
                    "stopping the service so that its supervisor restarts it",
                    index,
                    process.pid,
                    process.exitcode,
                    len(recent_restarts) + 1,
                    WORKER_RESTART_WINDOW_S,
                )
                forward(signal.SIGTERM, None)
                for other in processes.values():
                    other.join(timeout=SHUTDOWN_TIMEOUT_S)
                sys.exit(1)
            recent_restarts.append(now)
            restarts_by_slot[index] += 1
            log.error(
                "worker %d (pid %d) exited with %s; starting another in its place (restart %d)",
                index,
                process.pid,
                process.exitcode,
                restarts_by_slot[index],
            )
            processes[index] = start(index)
    for process in processes.values():
        process.join()


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _child(
    parent_pid: int, target: Callable[..., None], args: tuple[Any, ...], restarts: int
) -> None:
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
    os.environ[WORKER_RESTARTS_ENV] = str(restarts)
    target(*args)

"""Run a ledger node: uvloop, JSON logs, graceful stop on SIGTERM/SIGINT, and ``workers``
processes sharing the port through SO_REUSEPORT (each with its own batcher).

One batching process fed by HTTP worker processes over a unix socket was measured on 2 cores
(2026-11-28, a prototype with two HTTP processes): 4,640 and 4,890 transfers/s against 5,170
to 5,520 for one process, at more machine CPU per transfer (295 to 311 µs against 246 to 252)
and with batches hardly shorter (2.8 to 2.9 ms against 2.9 to 3.1). A batch waits on its own
chain of database work more than on the HTTP handlers that share its process.

Nor does a thread of its own, in the same process, help (2026-11-28, a prototype: the batch
writer on a second uvloop loop in a thread, with its own connection, handing each batch's
outcomes back in one thread-safe call): ``bench_ledger --seconds 8 --rounds 2`` gave ratio 0.81
(with sys.setswitchinterval at 0.5 ms) and 0.72 (at its default), against 1.00 for one thread
in a run between the two; the node's CPU per transfer was 246 to 273 µs against 200. The two
threads take turns on the GIL, so the handoffs are added to the same CPU."""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web

from ledger_node.app import build_app
from ledger_node.config import LedgerConfig
from ledger_node.node import LedgerNode
from runtime.http_problems import protocol_problem
from runtime.serving import (
    SHUTDOWN_TIMEOUT_S,
    ProblemAppRunner,
    configure_logging,
    run_workers,
    wait_for_stop_signal,
)
from runtime.telemetry import configure_tracing, start_metrics_site
from wire.service_auth import ServiceKeyring


async def _serve(
    config: LedgerConfig, keyring: ServiceKeyring, reuse_port: bool, worker_index: int
) -> None:
    configure_tracing("regiongate-ledger", config.region)
    metrics = None
    if config.metrics_port is not None:
        metrics = await start_metrics_site(config.host, config.metrics_port + worker_index)
    runner = ProblemAppRunner(
        build_app(LedgerNode(config, keyring)),
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        protocol_problem=protocol_problem,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    logging.getLogger("regiongate.ledger").info(
        "ledger node for region %s listening on %s:%d", config.region, config.host, config.port
    )
    await wait_for_stop_signal()
    await runner.cleanup()
    if metrics is not None:
        await metrics.cleanup()


def _worker(
    config: LedgerConfig, keyring: ServiceKeyring, reuse_port: bool, worker_index: int
) -> None:
    configure_logging()
    uvloop.run(_serve(config, keyring, reuse_port, worker_index))


def serve(config: LedgerConfig) -> None:
    """Serve until SIGINT or SIGTERM. Keys are loaded here, before any worker starts."""
    run_workers(_worker, (config, ServiceKeyring.load(config.service_keys_file)), config.workers)

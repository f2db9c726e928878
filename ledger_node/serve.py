"""Run a ledger node: uvloop, JSON logs, graceful stop on SIGTERM/SIGINT, and ``workers``
processes sharing the port through SO_REUSEPORT (each with its own batcher).

Each worker batches on its own event loop; a batching process fed by HTTP processes, and a
batch writer on a thread of its own, were measured and not kept (docs/decisions/0004)."""

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

"""Run a ledger node: uvloop, JSON logs, graceful stop on SIGTERM/SIGINT, and ``workers``
processes sharing the port through SO_REUSEPORT (each with its own batcher)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import sys
import time

import uvloop
from aiohttp import web

from ledger_node.app import build_app
from ledger_node.config import LedgerConfig
from ledger_node.node import LedgerNode
from ledger_node.service_auth import ServiceKeyring

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _serve(config: LedgerConfig, keyring: ServiceKeyring, reuse_port: bool) -> None:
    node = LedgerNode(config, keyring)
    app = build_app(node)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    logging.getLogger("regiongate.ledger").info(
        "ledger node for region %s listening on %s:%d", config.region, config.host, config.port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def _worker(config: LedgerConfig, keyring: ServiceKeyring, reuse_port: bool) -> None:
    configure_logging(os.environ.get("REGIONGATE_LOG_LEVEL", "INFO"))
    uvloop.run(_serve(config, keyring, reuse_port))


def serve(config: LedgerConfig) -> None:
    """Serve until SIGINT or SIGTERM. Keys are loaded here, before any worker starts."""
    keyring = ServiceKeyring.load(config.service_keys_file)
    if config.workers == 1:
        _worker(config, keyring, reuse_port=False)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(config, keyring, True), daemon=False)
        for _ in range(config.workers)
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

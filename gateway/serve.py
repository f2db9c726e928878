"""Run a gateway: HTTPS on the public port (plain HTTP only when no certificate is configured,
for tests), uvloop, JSON logs, ``workers`` processes sharing the port."""

from __future__ import annotations

import logging
from pathlib import Path

import uvloop
from aiohttp import web

from gateway.app import Gateway, build_gateway_app
from gateway.config import GatewayConfig
from runtime.http_problems import protocol_problem
from runtime.serving import (
    SHUTDOWN_TIMEOUT_S,
    ProblemAppRunner,
    configure_logging,
    run_workers,
    wait_for_stop_signal,
)
from runtime.telemetry import configure_tracing, start_metrics_site
from runtime.tls import server_context

log = logging.getLogger("regiongate.gateway")


async def _serve(config: GatewayConfig, reuse_port: bool, worker_index: int) -> None:
    configure_tracing("regiongate-gateway", config.region)
    metrics = None
    if config.metrics_port is not None:
        metrics = await start_metrics_site(config.host, config.metrics_port + worker_index)
    ssl_context = None
    if config.tls_cert_file and config.tls_key_file:
        ssl_context = server_context(Path(config.tls_cert_file), Path(config.tls_key_file))
    else:
        log.warning("no TLS certificate configured: serving plain HTTP")
    runner = ProblemAppRunner(
        build_gateway_app(Gateway(config)),
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        protocol_problem=protocol_problem,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.host,
        config.port,
        ssl_context=ssl_context,
        reuse_port=reuse_port,
        backlog=1024,
    )
    await site.start()
    log.info(
        "gateway for region %s listening on %s://%s:%d",
        config.region,
        "https" if ssl_context else "http",
        config.host,
        config.port,
    )
    await wait_for_stop_signal()
    await runner.cleanup()
    if metrics is not None:
        await metrics.cleanup()


def _worker(config: GatewayConfig, reuse_port: bool, worker_index: int) -> None:
    configure_logging()
    uvloop.run(_serve(config, reuse_port, worker_index))


def serve(config: GatewayConfig) -> None:
    run_workers(_worker, (config,), config.workers)

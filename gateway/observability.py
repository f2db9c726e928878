"""The gateway's traces and metrics: one server span per request (continuing the caller's W3C
trace), latency per route, method, status and home region, and how long requests wait for a
pooled connection to a ledger node. Upstream errors are counted by the router."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Histogram

from infra.telemetry import extract_context

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUEST_SECONDS = Histogram(
    "regiongate_gateway_request_seconds",
    "Gateway request latency",
    ["route", "method", "status", "home_region"],
    buckets=LATENCY_BUCKETS_S,
)
POOL_WAIT_SECONDS = Histogram(
    "regiongate_gateway_pool_wait_seconds",
    "Time waiting for a pooled ledger connection",
    buckets=LATENCY_BUCKETS_S,
)
# Handlers set it once they know the account's home region; the metrics label it.
HOME_REGION = web.RequestKey("home_region", str)

tracer = trace.get_tracer("regiongate.gateway")


@web.middleware
async def telemetry_middleware(request: web.Request, handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    with tracer.start_as_current_span(
        f"{request.method} {route_name}",
        kind=SpanKind.SERVER,
        context=extract_context(request.headers),
        attributes={"http.request.method": request.method, "http.route": route_name},
    ) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            span.set_attribute("http.response.status_code", status)
            home = request.get(HOME_REGION, "")
            span.set_attribute("regiongate.home_region", home)
            REQUEST_SECONDS.labels(route_name, request.method, str(status), home).observe(
                time.perf_counter() - started
            )


def pool_wait_trace_config() -> aiohttp.TraceConfig:
    """Times how long a request waits in aiohttp's connector queue for a connection."""
    config = aiohttp.TraceConfig()

    async def queued_start(session, context, params) -> None:
        context.queued_at = time.perf_counter()

    async def queued_end(session, context, params) -> None:
        POOL_WAIT_SECONDS.observe(time.perf_counter() - context.queued_at)

    config.on_connection_queued_start.append(queued_start)
    config.on_connection_queued_end.append(queued_end)
    return config

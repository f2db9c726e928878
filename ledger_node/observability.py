"""The ledger node's traces and metrics: one server span per request (continuing the gateway's
W3C trace), latency per route and status, and the batcher's behaviour: batch sizes, batch
durations, queue depth and retries after lost races."""

from __future__ import annotations

import time

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, Histogram

from infra.telemetry import extract_context

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUEST_SECONDS = Histogram(
    "regiongate_ledger_request_seconds",
    "Ledger request latency",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "regiongate_ledger_batch_size",
    "Operations decided and committed per batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_SECONDS = Histogram(
    "regiongate_ledger_batch_seconds",
    "Time from taking a batch to its commit",
    buckets=LATENCY_BUCKETS_S,
)
BATCH_RETRIES = Counter(
    "regiongate_ledger_batch_retries_total", "Batches run again after losing a race"
)
QUEUE_DEPTH = Gauge("regiongate_ledger_queue_depth", "Operations waiting for a batch")

tracer = trace.get_tracer("regiongate.ledger")


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
            REQUEST_SECONDS.labels(route_name, request.method, str(status)).observe(
                time.perf_counter() - started
            )

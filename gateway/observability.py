"""The gateway's traces and metrics: one server span per request (continuing the caller's W3C
trace), latency per route, method, status and home region, and how long requests wait for a
pooled connection to a ledger node. Upstream errors are counted by the router."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Counter, Histogram

from runtime.telemetry import server_middleware

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
RATE_LIMITER_FAIL_OPEN = Counter(
    "regiongate_rate_limiter_fail_open_total",
    "Requests let through because the rate limiter's Redis could not be reached in time",
)
# Handlers set it once they know the account's home region; the metrics label it.
HOME_REGION = web.RequestKey("home_region", str)

telemetry_middleware = server_middleware(
    "regiongate.gateway",
    REQUEST_SECONDS,
    lambda request, route, status: (
        route,
        request.method,
        str(status),
        request.get(HOME_REGION, ""),
    ),
)

"""Traces, metrics and log correlation for every regiongate process.

Traces: OpenTelemetry, one trace per request across gateway, router and ledger node, carried
between processes and regions in the W3C ``traceparent`` header. Spans are recorded only when
they have somewhere to go: an OTLP collector (the OTLP exporter installed and
``OTEL_EXPORTER_OTLP_ENDPOINT`` set) or stderr (``REGIONGATE_TRACE_CONSOLE=1``), sampled at
``REGIONGATE_TRACE_SAMPLE_RATIO`` (default 1.0, parent-based). Otherwise no SDK is installed:
recording spans nobody exports cost 15% of the ledger's throughput, measured, while the API's
no-op tracer still carries the caller's trace context through every hop and into the logs.

Metrics: Prometheus, served on an admin port of its own (never the public one).

Logs: the JSON log formatter adds the current trace id to every record. Every request is one
access line (logger ``regiongate.access``: method, route, status, latency, client id, trace id;
never a header, a token or a key). Answers below 400 are sampled at
``REGIONGATE_ACCESS_LOG_SAMPLE_RATIO``, by default 1.0 at the gateway and 0.01 at the ledger
node, whose requests the gateway has logged already (a line per request cost a ledger node 32 µs
of CPU per transfer, a fifth of its work: docs/benchmarks.md); every other answer is logged.
A request that arrives with no trace context starts one, so its hops share a trace id even
when no spans are recorded.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

log = logging.getLogger("regiongate.telemetry")

_configured = False


def configure_tracing(service_name: str, region: str) -> None:
    """Install the process's tracer provider once, and only when spans have somewhere to go;
    tests may install their own first."""
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        _configured = True
        return
    _configured = True
    processors = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed "
                "(pip install opentelemetry-exporter-otlp-proto-http)"
            )
    if os.environ.get("REGIONGATE_TRACE_CONSOLE") == "1":
        processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
    if not processors:
        return
    ratio = float(os.environ.get("REGIONGATE_TRACE_SAMPLE_RATIO", "1.0"))
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"REGIONGATE_TRACE_SAMPLE_RATIO must be in [0, 1], got {ratio}")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "regiongate.region": region}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


def extract_context(headers) -> otel_context.Context:
    """The caller's trace context from W3C headers (a new trace when there is none). The
    headers are read as given: aiohttp's are case-insensitive, as HTTP's are."""
    return propagate.extract(headers)


def spans_recorded() -> bool:
    """Whether spans go anywhere: an SDK tracer provider is installed (configure_tracing, or a
    test's own). Without one, every span is a no-op that only carries its parent's context."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


class CallerContext:
    """What a server span amounts to when spans are not recorded: the caller's trace context
    made current, so logs and outgoing requests carry it, or a new trace id when the caller
    sent none (unsampled: nothing is recorded, the id only correlates logs and hops). Measured
    on the ledger and gateway: the no-op span machinery cost several percent of their CPU per
    request for that alone."""

    __slots__ = ("_headers", "_token")

    def __init__(self, headers) -> None:
        self._headers = headers
        self._token = None

    def __enter__(self) -> trace.Span:
        if "traceparent" in self._headers:
            self._token = otel_context.attach(extract_context(self._headers))
        else:
            started = trace.NonRecordingSpan(
                trace.SpanContext(
                    trace_id=random.getrandbits(128) or 1,
                    span_id=random.getrandbits(64) or 1,
                    is_remote=False,
                    trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
                )
            )
            self._token = otel_context.attach(trace.set_span_in_context(started))
        return trace.INVALID_SPAN

    def __exit__(self, *exc_info) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


def traceparent() -> str | None:
    """The W3C traceparent of the current span, for an outgoing request."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


LABELLED_CHILDREN_CACHED_MAX = 4096
CLIENT_ID = web.RequestKey("client_id", str)
"""Who called, for the access line: set by the service once it has authenticated the caller
(the gateway's token client id, the ledger's service key id)."""
access_log = logging.getLogger("regiongate.access")


def access_log_sample_ratio(default: float) -> float:
    """REGIONGATE_ACCESS_LOG_SAMPLE_RATIO when set, else the service's default."""
    ratio = float(os.environ.get("REGIONGATE_ACCESS_LOG_SAMPLE_RATIO", default))
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"REGIONGATE_ACCESS_LOG_SAMPLE_RATIO must be in [0, 1], got {ratio}")
    return ratio


def server_middleware(
    tracer_name: str,
    histogram,
    labels: Callable[[web.Request, str, int], tuple[str, ...]],
    *,
    access_sample_ratio: float = 1.0,
):
    """The middleware every service uses: a server span continuing the caller's W3C trace, and
    one latency observation labelled by labels(request, route, status)."""
    tracer = trace.get_tracer(tracer_name)
    # prometheus_client's labels() takes a lock and builds a key on every call; the children
    # are cached here (bounded: routes, statuses and regions are few).
    children: dict[tuple[str, ...], object] = {}
    sample_ratio = access_log_sample_ratio(access_sample_ratio)

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        if spans_recorded():
            scope = tracer.start_as_current_span(
                f"{request.method} {route}",
                kind=SpanKind.SERVER,
                context=extract_context(request.headers),
                attributes={"http.request.method": request.method, "http.route": route},
            )
        else:
            scope = CallerContext(request.headers)
        with scope as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                span.set_attribute("http.response.status_code", status)
                key = labels(request, route, status)
                child = children.get(key)
                if child is None:
                    child = histogram.labels(*key)
                    if len(children) < LABELLED_CHILDREN_CACHED_MAX:
                        children[key] = child
                elapsed_s = time.perf_counter() - started
                child.observe(elapsed_s)
                if status >= 400 or random.random() < sample_ratio:
                    context = trace.get_current_span().get_span_context()
                    access_log.info(
                        "%s %s %d",
                        request.method,
                        route,
                        status,
                        extra={
                            "access": {
                                "method": request.method,
                                "route": route,
                                "status": status,
                                "latency_ms": round(elapsed_s * 1000, 3),
                                "client_id": request.get(CLIENT_ID),
                                "trace_id": format(context.trace_id, "032x")
                                if context.is_valid
                                else None,
                            }
                        },
                    )

    return middleware


class TraceIdFilter(logging.Filter):
    """Adds the current trace id to log records, for the JSON formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
        return True


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


WORKER_RESTARTS_ENV = "REGIONGATE_WORKER_RESTARTS"
"""How many times this worker's slot was restarted (runtime.serving sets it in the worker)."""
WORKER_RESTARTS = Counter(
    "regiongate_worker_restarts",
    "Times this worker's slot was restarted after its worker died (runtime.serving)",
)


async def start_metrics_site(host: str, port: int) -> web.AppRunner:
    """Serve /metrics on the admin port; returns the runner to clean up."""
    WORKER_RESTARTS.inc(int(os.environ.get(WORKER_RESTARTS_ENV, "0")))
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

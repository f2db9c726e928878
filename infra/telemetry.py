"""Traces, metrics and log correlation for every regiongate process.

Traces: OpenTelemetry, one trace per request across gateway, router and ledger node, carried
between processes and regions in the W3C ``traceparent`` header. Spans go to an OTLP collector
when the OTLP exporter is installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to stderr with
``REGIONGATE_TRACE_CONSOLE=1``, and nowhere otherwise (trace ids still reach the logs).

Metrics: Prometheus, served on an admin port of its own (never the public one).

Logs: the JSON log formatter adds the current trace id to every record.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("regiongate.telemetry")

_configured = False


def configure_tracing(service_name: str, region: str) -> None:
    """Install the process's tracer provider once; tests may install their own first."""
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        _configured = True
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "regiongate.region": region})
    )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not "
                "installed (pip install opentelemetry-exporter-otlp-proto-http)"
            )
    if os.environ.get("REGIONGATE_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def extract_context(headers) -> otel_context.Context:
    """The caller's trace context from W3C headers (a new trace when there is none)."""
    return propagate.extract(dict(headers))


def traceparent() -> str | None:
    """The W3C traceparent of the current span, for an outgoing request."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


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


async def start_metrics_site(host: str, port: int) -> web.AppRunner:
    """Serve /metrics on the admin port; returns the runner to clean up."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

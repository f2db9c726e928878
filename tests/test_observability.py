"""Observability across the path of a request: one trace from the caller through the gateway,
the router and the remote region's ledger node (W3C traceparent across processes' HTTP hops);
Prometheus metrics for gateway latency per route and home region, and for the ledger's batches;
JSON log lines that carry the trace id."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest

from runtime.serving import JsonLogFormatter
from runtime.telemetry import TraceIdFilter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the process's SDK tracer provider (installed if none is)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_one_trace_from_gateway_to_the_remote_ledger(cluster):
    exporter = _exporter()
    us_account = await cluster.account("us")
    exporter.clear()
    status, _, _ = await cluster.call(
        "eu",
        "GET",
        f"/v1/accounts/{us_account}/balance",
        token=cluster.admin,
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert status == 200
    spans = [
        s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID
    ]
    by_kind = {s.kind.name: s for s in spans}
    assert {"SERVER", "CLIENT"} <= set(by_kind), [s.name for s in spans]
    servers = [s for s in spans if s.kind.name == "SERVER"]
    gateway_span = next(
        s for s in servers if s.parent and format(s.parent.span_id, "016x") == CALLER_SPAN
    )
    client_span = next(
        s
        for s in spans
        if s.kind.name == "CLIENT" and s.parent.span_id == gateway_span.context.span_id
    )
    ledger_span = next(
        s for s in servers if s.parent and s.parent.span_id == client_span.context.span_id
    )
    assert client_span.attributes["regiongate.region"] == "us"
    assert client_span.attributes["regiongate.local"] is False
    assert gateway_span.attributes["regiongate.home_region"] == "us"
    assert ledger_span.attributes["http.route"] == "/v1/accounts/{account_id}/balance"


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample's value now (0 before its first observation). The services register their
    metrics in the process's registry, which earlier tests have filled too: every assertion
    here is on what one test's own requests added."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_metrics_cover_gateway_routes_and_ledger_batches(cluster):
    eu_account = await cluster.account("eu", fund=10)
    read = {
        "route": "/v1/accounts/{account_id}{suffix}",
        "method": "GET",
        "status": "200",
        "home_region": "eu",
    }
    names = [
        ("regiongate_gateway_request_seconds_count", read),
        ("regiongate_ledger_batch_size_count", None),
        *(
            ("regiongate_ledger_batch_phase_seconds_count", {"phase": phase})
            for phase in ("lock_and_read", "decide", "write")
        ),
    ]
    before = [sample(name, labels) for name, labels in names]
    await cluster.call("us", "GET", f"/v1/accounts/{eu_account}/balance", token=cluster.admin)
    await cluster.transfer("eu", "eu-clearing-EUR", eu_account, 1)
    after = [sample(name, labels) for name, labels in names]
    assert after[0] == before[0] + 1  # exactly this test's read, labelled by its home region
    assert all(a >= b + 1 for a, b in zip(after[1:], before[1:], strict=True)), (before, after)
    text = generate_latest(REGISTRY).decode()
    assert "regiongate_ledger_queue_depth" in text
    assert "regiongate_ledger_request_seconds_bucket" in text


def test_json_logs_carry_the_trace_id():
    _exporter()
    record_holder = []

    class Capture(logging.Handler):
        def emit(self, record):
            record_holder.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(TraceIdFilter())
    logger = logging.getLogger("regiongate.test.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with trace.get_tracer("test").start_as_current_span("work") as span:
            logger.info("inside a span")
            expected = format(span.get_span_context().trace_id, "032x")
    finally:
        logger.removeHandler(handler)
    entry = json.loads(record_holder[-1])
    assert entry["trace_id"] == expected and entry["message"] == "inside a span"


async def test_a_cross_region_transfer_is_one_trace_and_counted(cluster):
    """The saga's step 2 continues the client's trace into the destination's ledger, and its
    outcome lands in the saga metrics."""
    exporter = _exporter()
    payer = await cluster.account("eu", fund=100)
    payee = await cluster.account("us")
    completed = {"outcome": "completed", "region": "us"}
    step = {"action": "credit", "answer": "applied", "region": "us"}
    outcomes_before = sample("regiongate_saga_outcomes_total", completed)
    steps_before = sample("regiongate_saga_step_call_seconds_count", step)
    exporter.clear()
    status, _, transfer = await cluster.call(
        "eu",
        "POST",
        "/v1/transfers",
        token=cluster.admin,
        key="trace-saga-" + TRACE_ID[:8],
        body={
            "debit_account_id": payer,
            "credit_account_id": payee,
            "amount": 7,
            "currency": "EUR",
        },
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert status == 201 and transfer["status"] == "completed", transfer
    routes = {
        s.attributes.get("http.route")
        for s in exporter.get_finished_spans()
        if format(s.context.trace_id, "032x") == TRACE_ID and s.kind.name == "SERVER"
    }
    assert {"/v1/transfers", "/v1/sagas", "/v1/saga-steps/{saga_id}/{action}"} <= routes, routes
    assert sample("regiongate_saga_outcomes_total", completed) == outcomes_before + 1
    assert sample("regiongate_saga_step_call_seconds_count", step) >= steps_before + 1
    assert "regiongate_saga_seconds_bucket" in generate_latest(REGISTRY).decode()


def test_unrecorded_requests_still_carry_the_callers_trace():
    """Without an SDK provider the server middleware makes no span, only the caller's context
    current: outgoing requests carry the caller's trace and span ids, and logs its trace id."""
    from multidict import CIMultiDict

    from runtime.telemetry import CallerContext, traceparent

    caller = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("regiongate.test.caller-context")
    logger.addHandler(handler := Capture())
    handler.addFilter(TraceIdFilter())
    logger.setLevel(logging.INFO)
    try:
        with CallerContext(CIMultiDict({"TraceParent": caller})) as span:
            assert not span.is_recording()
            assert traceparent() == caller
            logger.info("inside the caller's trace")
        assert traceparent() != caller  # detached again
        with CallerContext(CIMultiDict()):
            assert traceparent() is None or TRACE_ID not in traceparent()
    finally:
        logger.removeHandler(handler)
    assert records[0].trace_id == TRACE_ID


async def test_every_request_is_one_json_access_line_without_secrets(cluster, caplog):
    """An access line per request, with method, route, status, latency, client and trace id;
    no token, no idempotency key, in any record the request logs."""
    alice = await cluster.account("eu", fund=5)
    token = cluster.keys.mint("access-client", "wallet", accounts=[alice])
    key = "secret-key-" + alice
    caplog.set_level(logging.INFO, logger="regiongate")
    caplog.clear()
    status, _, _ = await cluster.call(
        "us",
        "POST",
        "/v1/transfers",
        token=token,
        key=key,
        body={
            "debit_account_id": alice,
            "credit_account_id": "eu-clearing-EUR",
            "amount": 1,
            "currency": "EUR",
        },
    )
    assert status == 201
    await cluster.call("eu", "GET", f"/v1/accounts/{alice}", token="not-a-token")
    lines = [
        json.loads(JsonLogFormatter().format(r))
        for r in caplog.records
        if r.name == "regiongate.access"
    ]
    gateway_lines = [line for line in lines if line.get("client_id") == "access-client"]
    assert len(gateway_lines) == 1, lines
    (line,) = gateway_lines
    assert line["method"] == "POST" and line["route"] == "/v1/transfers"
    assert line["status"] == 201 and line["latency_ms"] > 0
    assert len(line["trace_id"]) == 32
    ledger_lines = [line for line in lines if line.get("client_id") == "test-1"]
    assert any(x["trace_id"] == line["trace_id"] for x in ledger_lines), lines  # one trace
    assert any(x["status"] == 401 for x in lines)
    text = "\n".join(JsonLogFormatter().format(r) for r in caplog.records)
    assert token not in text and "not-a-token" not in text and key not in text

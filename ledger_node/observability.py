"""The ledger node's traces and metrics: one server span per request (continuing the gateway's
W3C trace), latency per route and status, and the batcher's behaviour: batch sizes, batch
durations and their phases, queue depth and retries after lost races."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from runtime.telemetry import server_middleware

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
BATCH_PHASE_SECONDS = Histogram(
    "regiongate_ledger_batch_phase_seconds",
    "A batch's time by phase: lock_and_read (its round trip to lock and read), decide (in "
    "memory, with the checks before commit) and write (the write, COMMIT and its WAL flush)",
    ["phase"],
    buckets=LATENCY_BUCKETS_S,
)
# Bound once: labels() takes a lock and builds a key on every call.
BATCH_LOCK_AND_READ_SECONDS = BATCH_PHASE_SECONDS.labels("lock_and_read")
BATCH_DECIDE_SECONDS = BATCH_PHASE_SECONDS.labels("decide")
BATCH_WRITE_SECONDS = BATCH_PHASE_SECONDS.labels("write")
BATCH_RETRIES = Counter(
    "regiongate_ledger_batch_retries_total", "Batches run again after losing a race"
)
QUEUE_DEPTH = Gauge("regiongate_ledger_queue_depth", "Operations waiting for a batch")
SAGA_OUTCOMES = Counter(
    "regiongate_saga_outcomes_total",
    "Cross-region transfers ended, by outcome and destination region",
    ["outcome", "region"],
)
SAGA_SECONDS = Histogram(
    "regiongate_saga_seconds",
    "From the hold to the saga's end, as seen by the node that ended it",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SAGA_STEP_ERRORS = Counter(
    "regiongate_saga_step_errors_total",
    "Calls to a destination ledger whose outcome was unknown, by destination region",
    ["region"],
)
SAGA_STEP_CALL_SECONDS = Histogram(
    "regiongate_saga_step_call_seconds",
    "Calls to a destination ledger for a saga's step 2 or its cancel, by destination region, "
    "action and what the answer said (applied, never, unknown): the WAN's share of a saga",
    ["region", "action", "answer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SAGAS_RUNNING = Gauge("regiongate_sagas_running", "Sagas this process is driving now")

telemetry_middleware = server_middleware(
    "regiongate.ledger",
    REQUEST_SECONDS,
    lambda request, route, status: (route, request.method, str(status)),
    access_sample_ratio=0.01,
)
SAGAS_OVERDUE = Gauge(
    "regiongate_sagas_overdue",
    "Sagas this region orchestrates still unfinished 30 s past their deadline (recovery pass)",
)
AUDIT_CHECKS = Gauge("regiongate_audit_checks", "Checks the last cross-region audit ran")
AUDIT_FAILED_CHECKS = Gauge(
    "regiongate_audit_failed_checks", "Checks the last cross-region audit found violated"
)
AUDIT_LAST_RUN = Gauge(
    "regiongate_audit_last_run_timestamp_seconds",
    "When the periodic cross-region audit last completed (regiongate audit --watch-s)",
)

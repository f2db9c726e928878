"""Identity's metrics (Prometheus): claims by outcome, step latency, claims running, and the
owner's reaper."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CLAIM_OUTCOMES = Counter(
    "regiongate_identity_claims_total",
    "Claim sagas ended at this home, by kind (create, rename) and outcome",
    ["kind", "outcome"],
)
CLAIM_STEP_SECONDS = Histogram(
    "regiongate_identity_claim_step_seconds",
    "One step of a claim saga (reserving includes the bind), by the status it started from",
    ["status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CLAIMS_RUNNING = Gauge("regiongate_identity_claims_running", "Claim sagas this process drives")
REAPED = Counter(
    "regiongate_identity_reaped_total",
    "Owner-side clean-ups: expired reservations confirmed or released, held names released",
    ["action"],
)
CLAIMS_OVERDUE = Gauge(
    "regiongate_identity_claims_overdue",
    "Claims of this home's players still unfinished a minute after they began",
)
RESERVATIONS_UNSETTLED = Gauge(
    "regiongate_identity_reservations_unsettled",
    "Reservations at this owner unconfirmed a minute past their lease (their home not answering)",
)

"""The benchmarks' closed-loop load generator, on the project's own keep-alive client.

On a 2-core machine the load generator shares the CPU with the server and PostgreSQL, so its
own cost per request must be small: it sends through region_router's HttpPool (the client the
gateway and the saga use: llhttp parsing, bounded connections, a timeout on every call), one
connection per simulated client. Every request still carries a fresh idempotency key and its
own HMAC signature, as a gateway's would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from region_router.http_pool import HttpPool, UpstreamConnectionError
from wire.service_auth import ServiceKey, sign

REQUEST_TIMEOUT_S = 30.0
"""A request unanswered this long counts as status 0 (no answer) and the client goes on."""
NO_ANSWER = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the pool sends it: the raw target is what a signature covers."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


@dataclass
class LoadResult:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    batch_size_mean: float = 0.0
    wal_sync_ms: float | None = None
    cores: dict[str, float | None] = field(default_factory=dict)
    """Cores each part used over the run (loadtests.cpustats), where the benchmark measures it."""
    phases_ms: dict[str, float | None] = field(default_factory=dict)
    """Mean milliseconds of the service's own histograms over the run (loadtests.promstats)."""
    error_samples: dict[int, bytes] = field(default_factory=dict)
    """One response body per status >= 300, to say what went wrong."""

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @classmethod
    def pooled(cls, results: list[LoadResult]) -> LoadResult:
        """Several runs' requests as one (a benchmark's rounds): for percentiles over all of
        them, and their statuses counted together."""
        pooled = cls(latencies_ms=[ms for result in results for ms in result.latencies_ms])
        for result in results:
            pooled.requests += result.requests
            pooled.elapsed_s += result.elapsed_s
            for status, count in result.statuses.items():
                pooled.statuses[status] = pooled.statuses.get(status, 0) + count
            pooled.error_samples.update(result.error_samples)
        return pooled


def check_load_arguments(parser, args) -> None:
    """The bounds every closed-loop benchmark puts on --seconds, --clients and --rounds (if it
    takes rounds): refused with the parser's usage, before anything starts."""
    if not 1 <= args.seconds <= 3600 or not 1 <= args.clients <= 1024:
        parser.error("--seconds must be in [1, 3600] and --clients in [1, 1024]")
    if not 1 <= getattr(args, "rounds", 1) <= 20:
        parser.error("--rounds must be in [1, 20]")


def median(values: list[float | None]) -> float | None:
    """The median over a benchmark's rounds of the figures that were measured (a run without WAL
    flushes has None), rounded to 3 places."""
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 3) if known else None


def signed_get(path: str, key: ServiceKey) -> Request:
    return Request("GET", path, tuple(sign(key, "GET", path, b"").items()))


def bearer_get(path: str, token: str) -> Request:
    return Request("GET", path, (("Authorization", f"Bearer {token}"),))


def bearer_post(path: str, body: bytes, token: str, idempotency_key: str) -> Request:
    headers = (
        ("Authorization", f"Bearer {token}"),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", idempotency_key),
    )
    return Request("POST", path, headers, body)


def signed_post(path: str, body: bytes, key: ServiceKey, idempotency_key: str) -> Request:
    headers = (
        ("Content-Type", "application/json"),
        ("Idempotency-Key", idempotency_key),
        *sign(key, "POST", path, body, idempotency_key).items(),
    )
    return Request("POST", path, headers, body)


async def run_load(
    *,
    host: str,
    port: int,
    clients: int,
    seconds: float,
    warmup_s: float,
    make_request: Callable[[int], Request],
    ssl_context=None,
) -> LoadResult:
    """Closed loop: each client sends its next request when the last one is answered. Only
    requests completed after the warm-up count."""
    base_url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
    result = LoadResult()
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def client(index: int, pool: HttpPool) -> None:
        sequence = 0
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            request = make_request(index * 1_000_000_000 + sequence)
            sequence += 1
            try:
                response = await pool.request(
                    base_url,
                    request.method,
                    request.target,
                    request.headers,
                    request.body,
                    timeout_s=REQUEST_TIMEOUT_S,
                )
                status, body = response.status, response.body
            except (UpstreamConnectionError, TimeoutError) as exc:
                status, body = NO_ANSWER, str(exc).encode()
            done = time.perf_counter()
            if done >= measure_from and done < stop_at:
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.latencies_ms.append((done - sent) * 1000)
                if not 200 <= status < 300:
                    result.error_samples.setdefault(status, body[:300])

    async with HttpPool(
        connections_per_origin_max=clients, ssl_context=ssl_context, response_size_max_bytes=1 << 20
    ) as pool:
        await asyncio.gather(*(client(i, pool) for i in range(clients)))
    result.elapsed_s = seconds
    return result

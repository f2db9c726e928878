"""A lean closed-loop HTTP/1.1 load generator for the benchmarks.

On a 2-core machine the load generator shares the CPU with the server and PostgreSQL, so its
own cost per request must be small: one keep-alive connection per simulated client, requests
built as bytes, responses parsed just enough to find their end (Content-Length). Every request
still carries a fresh idempotency key and its own HMAC signature, as a gateway's would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wire.service_auth import ServiceKey, sign


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        header_end = self.buffer.find(b"\r\n\r\n")
        if header_end < 0:
            return
        head = bytes(self.buffer[:header_end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        total = header_end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[header_end + 4 : total])
        del self.buffer[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


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


def median(values: list[float | None]) -> float | None:
    """The median over a benchmark's rounds of the figures that were measured (a run without WAL
    flushes has None), rounded to 3 places."""
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 3) if known else None


def signed_get(host: str, port: int, path: str, key: ServiceKey) -> bytes:
    headers = sign(key, "GET", path, b"")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def bearer_get(host: str, port: int, path: str, token: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Bearer {token}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def bearer_post(
    host: str, port: int, path: str, body: bytes, token: str, idempotency_key: str
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Idempotency-Key: {idempotency_key}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed_post(
    host: str, port: int, path: str, body: bytes, key: ServiceKey, idempotency_key: str
) -> bytes:
    headers = sign(key, "POST", path, body, idempotency_key)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Idempotency-Key: {idempotency_key}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_load(
    *,
    host: str,
    port: int,
    clients: int,
    seconds: float,
    warmup_s: float,
    make_request: Callable[[int], bytes],
    ssl_context=None,
) -> LoadResult:
    """Closed loop: each client sends its next request when the last one is answered. Only
    requests completed after the warm-up count."""
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(clients):
        _, protocol = await loop.create_connection(
            _Connection,
            host,
            port,
            ssl=ssl_context,
            server_hostname="localhost" if ssl_context else None,
        )
        connections.append(protocol)
    result = LoadResult()
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def client(index: int, connection: _Connection) -> None:
        sequence = 0
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            status, body = await connection.request(make_request(index * 1_000_000_000 + sequence))
            sequence += 1
            done = time.perf_counter()
            if done >= measure_from and done < stop_at:
                result.requests += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.latencies_ms.append((done - sent) * 1000)
                if status >= 300:
                    result.error_samples.setdefault(status, body[:300])

    await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    result.elapsed_s = seconds
    for connection in connections:
        connection.transport.close()
    return result

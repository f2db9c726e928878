"""A lean keep-alive HTTP/1.1 client pool for the internal hop to ledger nodes.

Every request a gateway serves, and every step of a saga, crosses this hop, so its CPU cost is
paid once per request on the gateway's one event loop. aiohttp's client was measured (py-spy,
``loadtests.bench_gateway``) at about a third of a gateway's CPU: per request it builds a
request object, a response object, a timer, trace hooks and stream readers, none of which an
internal call between our own services needs. This pool keeps only what the hop needs:

- one request is one ``write`` of bytes built in a single join;
- responses are parsed by httptools (llhttp, the parser uvicorn uses), which handles
  Content-Length and chunked bodies alike, so nothing about the framing is written by hand;
- connections are kept alive per origin, at most ``connections_per_origin_max`` of them, the
  newest idle one reused first (warm), any idle longer than ``idle_timeout_s`` closed, so the
  server's own keep-alive timeout never races a request; at most ``origins_max`` origins are
  remembered;
- every request has one bound, ``timeout_s``, over the wait for a connection, the connect, the
  send and the answer; a connection whose request timed out or failed is closed, never reused.

Failures to connect, lost connections and unparsable answers raise ``UpstreamConnectionError``;
the caller decides whether a retry is safe (only reads and keyed writes are retried).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict
from yarl import URL

from region_router.errors import RouterError

CONNECTIONS_PER_ORIGIN_MAX_DEFAULT = 128
# Ledger nodes come and go (autoscaling gives each new task a new address): past this many
# origins, those with no request in flight are forgotten and their idle connections closed.
ORIGINS_MAX_DEFAULT = 256
CONNECT_TIMEOUT_S_DEFAULT = 5.0
IDLE_TIMEOUT_S_DEFAULT = 30.0
RESPONSE_SIZE_MAX_BYTES_DEFAULT = 16 * 1024 * 1024


class UpstreamConnectionError(RouterError, ConnectionError):
    """The request's outcome is unknown: no connection, a lost one, or an unparsable answer."""

    def __init__(self, origin: str, reason: str) -> None:
        super().__init__(f"{origin}: {reason}")
        self.origin = origin
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight on it."""

    __slots__ = (
        "_body",
        "_headers",
        "_parser",
        "_response_size_max_bytes",
        "_size",
        "_waiter",
        "idle_since",
        "open",
        "transport",
    )

    def __init__(self, response_size_max_bytes: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.idle_since = 0.0
        self._response_size_max_bytes = response_size_max_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.open = True

    def connection_lost(self, exc) -> None:
        self.open = False
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._response_size_max_bytes:
            self._fail(ValueError(f"answer over {self._response_size_max_bytes} bytes"))
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # an answer nobody asked for: the connection is out of step
            return
        if not self._parser.should_keep_alive():
            self.open = False
        waiter.set_result(
            HttpResponse(self._parser.get_status_code(), self._headers, b"".join(self._body))
        )

    # requests

    def send(self, payload: bytes) -> asyncio.Future[HttpResponse]:
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers = CIMultiDict()
        self._body = []
        self._size = 0
        self.transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class _OriginPool:
    __slots__ = ("host", "host_header", "idle", "in_flight", "port", "slots", "ssl")

    def __init__(self, url: URL, connections_max: int, ssl_context) -> None:
        self.host = url.host
        self.port = url.port
        self.host_header = f"{url.host}:{url.port}"
        self.ssl = ssl_context if url.scheme == "https" else None
        self.idle: collections.deque[_Connection] = collections.deque()
        self.slots = asyncio.Semaphore(connections_max)
        self.in_flight = 0  # requests holding a slot

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()


class HttpPool:
    """Keep-alive connections to ledger nodes, bounded per origin. One per process."""

    def __init__(
        self,
        *,
        connections_per_origin_max: int = CONNECTIONS_PER_ORIGIN_MAX_DEFAULT,
        origins_max: int = ORIGINS_MAX_DEFAULT,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
        response_size_max_bytes: int = RESPONSE_SIZE_MAX_BYTES_DEFAULT,
        ssl_context: ssl.SSLContext | None = None,
        on_pool_wait: Callable[[float], None] | None = None,
    ) -> None:
        if not 1 <= connections_per_origin_max <= 4096:
            raise ValueError(
                f"connections_per_origin_max must be in [1, 4096], got {connections_per_origin_max}"
            )
        if not 1 <= origins_max <= 65536:
            raise ValueError(f"origins_max must be in [1, 65536], got {origins_max}")
        if not 0 < connect_timeout_s <= 60:
            raise ValueError(f"connect_timeout_s must be in (0, 60], got {connect_timeout_s}")
        if not 0 < idle_timeout_s <= 300:
            raise ValueError(f"idle_timeout_s must be in (0, 300], got {idle_timeout_s}")
        if not 1024 <= response_size_max_bytes <= 1 << 30:
            raise ValueError(
                f"response_size_max_bytes must be in [1024, 2**30], got {response_size_max_bytes}"
            )
        self._connections_max = connections_per_origin_max
        self._origins_max = origins_max
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._response_size_max_bytes = response_size_max_bytes
        self._ssl_context = ssl_context
        self._on_pool_wait = on_pool_wait
        self._origins: dict[str, _OriginPool] = {}
        self._closed = False

    async def request(
        self,
        base_url: str,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
    ) -> HttpResponse:
        """Send one request to base_url's origin; target is the raw path and query, sent as
        given (it is what the caller signed). Raises TimeoutError past timeout_s and
        UpstreamConnectionError when the outcome is unknown."""
        if self._closed:
            raise UpstreamConnectionError(base_url, "the pool is closed")
        origin = self._origins.get(base_url) or self._add_origin(base_url)
        payload = _encode_request(method, target, origin.host_header, headers, body)
        async with asyncio.timeout(timeout_s):
            if origin.in_flight >= self._connections_max and self._on_pool_wait is not None:
                queued_at = time.perf_counter()
                await origin.slots.acquire()
                self._on_pool_wait(time.perf_counter() - queued_at)
            else:
                await origin.slots.acquire()
            origin.in_flight += 1
            connection = None
            try:
                connection = await self._connection(origin, base_url)
                try:
                    response = await connection.send(payload)
                # RuntimeError: uvloop refuses a write on a transport that has just closed.
                except (OSError, ValueError, RuntimeError, httptools.HttpParserError) as exc:
                    raise UpstreamConnectionError(base_url, _describe(exc)) from exc
            except BaseException:
                if connection is not None:
                    connection.close()  # its answer may still come: never reuse it
                raise
            else:
                if connection.open and not self._closed:
                    connection.idle_since = time.monotonic()
                    origin.idle.append(connection)
                else:
                    connection.close()
                return response
            finally:
                origin.in_flight -= 1
                origin.slots.release()

    def _add_origin(self, base_url: str) -> _OriginPool:
        if len(self._origins) >= self._origins_max:
            for known, origin in list(self._origins.items()):
                if origin.in_flight == 0:
                    origin.close_idle()
                    del self._origins[known]
        origin = _OriginPool(URL(base_url), self._connections_max, self._ssl_context)
        self._origins[base_url] = origin
        return origin

    async def _connection(self, origin: _OriginPool, base_url: str) -> _Connection:
        stale_before = time.monotonic() - self._idle_timeout_s
        while origin.idle:
            connection = origin.idle.pop()
            if connection.open and connection.idle_since > stale_before:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._response_size_max_bytes),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                )
        except TimeoutError as exc:
            raise UpstreamConnectionError(base_url, "connect timed out") from exc
        except OSError as exc:
            raise UpstreamConnectionError(base_url, _describe(exc)) from exc
        return connection

    async def close(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            origin.close_idle()

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


def _encode_request(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    for line in lines:
        # A CR, LF or NUL inside the target, a name or a value would split the request in two
        # (request smuggling, header injection): refuse it before anything is sent.
        if "\r" in line or "\n" in line or "\x00" in line:
            raise ValueError("a request line or header contains CR, LF or NUL")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""WAN emulation between regions: an asyncio TCP proxy per directed link (this kernel has no
netem). Each link adds a one-way delay to every byte in each direction, and can be cut (a
partition: bytes vanish, as they do when packets are dropped, so callers see timeouts rather
than refusals), healed, or made to drop its open connections.

The delay is applied per chunk with its arrival time, so a link keeps its bandwidth: a chunk
waits until ``arrival + delay``, not behind the previous chunk's wait. Buffers are bounded
(``BUFFER_BYTES_MAX`` per direction; a full buffer stops reading, which is TCP backpressure).

Each connection is a pair of protocols with one timer per direction, not a pair of tasks: a
chunk costs one callback on its way in and one on its way out. The proxy shares this machine's
two cores with the regions it connects, and a network costs their hosts nothing, so the less it
takes the closer the benchmarks come to a real WAN.

Tests drive links in a thread of their own (``WanThread``), so they can cut and heal them; the
local cluster and the benchmark run them in a process of their own (``WanProcess``).

Over 400 lines: the proxy, its link controls and the process that runs it stay together,
since the tests drive all three as one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("regiongate.wan")

BUFFER_BYTES_MAX = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0


# What an end of a connection is given to do when its time comes, besides writing bytes.
_EOF = "eof"
_CLOSE = "close"
_ABORT = "abort"


class _End(asyncio.Protocol):
    """One socket of a proxied connection (the client's, or the one to the target). What it
    reads goes to the other end's queue, stamped with when it may leave; one timer per end
    writes the queue's due head, so the bytes leave in the order they came. A queue over
    BUFFER_BYTES_MAX, or a socket whose write buffer is full, stops the other end reading:
    TCP's backpressure, through the link."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.peer: _End | None = None
        self.transport: asyncio.Transport | None = None
        self._queue: collections.deque[tuple[float, bytes | str]] = collections.deque()
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._holding_peer = False  # whether this end has paused the peer's reading
        self.lost = False

    # The socket's side.

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.connection.closed:  # closed while it connected
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.connection.blackholed:
            self.peer.send_later(data)

    def eof_received(self) -> bool:
        if not self.connection.blackholed:
            self.peer.send_later(_EOF)
        return True  # half-closed: the other way may still carry the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.connection.closed:
            return
        if self.peer.lost or self.peer.transport is None:
            self.connection.close()
        elif not self.connection.blackholed:
            # The other end ends as this one did, one trip later, after what is on its way.
            self.peer.send_later(_CLOSE if exc is None else _ABORT)
        # In a partition the other end hears nothing, as it would not: heal() resets it.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._hold_peer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._hold_peer()

    # The link's side.

    def send_later(self, item: bytes | str) -> None:
        """Queue bytes (or an end) to leave from this end after the link's one-way delay."""
        if self.lost:
            return
        loop = self.connection.loop
        self._queue.append((loop.time() + self.connection.link.one_way_delay_ms / 1000, item))
        if isinstance(item, bytes):
            self._queued_bytes += len(item)
        if self._timer is None:
            self._arm()
        self._hold_peer()

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._queued_bytes = 0
        if self.transport is not None:
            self.transport.abort()

    def _arm(self) -> None:
        if self._queue and self.transport is not None and not self.lost:
            self._timer = self.connection.loop.call_at(self._queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        now = self.connection.loop.time()
        chunks: list[bytes] = []
        end: str | None = None
        # The head is due (its timer fired: a clock may fire a hair early), and so is all that
        # came in behind it by now, up to an end.
        while self._queue and end is None and (not chunks or self._queue[0][0] <= now):
            _, item = self._queue.popleft()
            if isinstance(item, str):
                end = item
            else:
                self._queued_bytes -= len(item)
                chunks.append(item)
        transport = self.transport
        if transport.is_closing():
            return
        if self.connection.blackholed:  # what was on its way when the link was cut is lost
            chunks, end = [], None
        if chunks:
            transport.write(b"".join(chunks))
        if end == _EOF:
            if transport.can_write_eof():
                transport.write_eof()
        elif end == _CLOSE:
            transport.close()
        elif end == _ABORT:
            transport.abort()
        self._arm()
        self._hold_peer()

    def _hold_peer(self) -> None:
        """Pause the peer's reading while this end cannot take more; resume it once it can."""
        hold = self._write_paused or self._queued_bytes > BUFFER_BYTES_MAX
        if hold == self._holding_peer or self.peer is None or self.peer.transport is None:
            return
        self._holding_peer = hold
        with contextlib.suppress(RuntimeError):  # a closing transport
            if hold:
                self.peer.transport.pause_reading()
            else:
                self.peer.transport.resume_reading()


class _Connection:
    """A client's connection through a link, and the one it opens to the target."""

    def __init__(self, link: WanLink, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.loop = loop
        self.blackholed = link.cut_now
        self.client = _End(self)
        self.upstream = _End(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.connecting: asyncio.Task | None = None
        self.closed = False

    def open_upstream(self) -> None:
        """After the SYN's trip, connect to the target; the client's bytes wait in the
        upstream end's queue meanwhile. A connection accepted during a partition never
        reaches the target."""
        if self.closed or self.blackholed:
            return
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.loop.create_connection(lambda: self.upstream, *self.link.target)
        except (OSError, TimeoutError):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        self.client.abort()
        self.upstream.abort()
        self.link._connections.discard(self)


class WanLink:
    """One directed link: connections to ``port`` are forwarded to ``target``."""

    def __init__(
        self,
        name: str,
        target_host: str,
        target_port: int,
        *,
        one_way_delay_ms: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if one_way_delay_ms < 0 or one_way_delay_ms > 60_000:
            raise ValueError(f"one_way_delay_ms must be in [0, 60000], got {one_way_delay_ms}")
        self.name = name
        self.target = (target_host, target_port)
        self.one_way_delay_ms = one_way_delay_ms
        self._listen = (listen_host, listen_port)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.cut_now = False
        self.port = listen_port

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._accept, *self._listen)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_delay(self, one_way_delay_ms: float) -> None:
        self.one_way_delay_ms = one_way_delay_ms

    def cut(self) -> None:
        """Partition: from now on nothing crosses, in either direction, on any connection."""
        self.cut_now = True
        for connection in self._connections:
            connection.blackholed = True

    def heal(self) -> None:
        """End the partition. Connections that lived through it are reset (their peers would
        have timed them out); new ones work."""
        self.cut_now = False
        for connection in [c for c in self._connections if c.blackholed]:
            connection.close()

    def drop_connections(self) -> None:
        """Reset every open connection now (a middlebox or a peer restarting)."""
        for connection in list(self._connections):
            connection.close()

    def _accept(self) -> _End:
        connection = _Connection(self, asyncio.get_running_loop())
        self._connections.add(connection)
        connection.loop.call_later(self.one_way_delay_ms / 1000, connection.open_upstream)
        return connection.client


class WanThread:
    """Links served by an event loop in a thread, for synchronous callers (the local cluster,
    the benchmark). Control calls are forwarded to the loop and wait for it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan", daemon=True)
        self.links: dict[str, WanLink] = {}

    def start(self) -> None:
        self._thread.start()

    def add(self, name: str, target_host: str, target_port: int, **kwargs) -> WanLink:
        link = WanLink(name, target_host, target_port, **kwargs)
        self._run(link.start())
        self.links[name] = link
        return link

    def call(self, name: str, method: str, *args) -> None:
        link = self.links[name]
        self._run(_call(getattr(link, method), *args))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for link in self.links.values():
            self._run(link.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)


async def _call(function, *args):
    return function(*args)


@dataclass(frozen=True, slots=True)
class LinkAddress:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class WanProcess:
    """Links served by a process of their own (``python -m infra.wan``), so that copying every
    byte between regions never competes for a GIL with the caller (the local cluster's
    launcher, the benchmark's load generator). Fixed delay, no control: tests that cut and heal
    links use WanLink or WanThread."""

    def __init__(self, one_way_delay_ms: float, log_path: Path) -> None:
        self.one_way_delay_ms = one_way_delay_ms
        self.log_path = log_path
        self.links: dict[str, LinkAddress] = {}
        self._targets: dict[str, int] = {}
        self._process: subprocess.Popen | None = None

    def add(self, name: str, target_port: int) -> None:
        self._targets[name] = target_port

    def start(self) -> None:
        argv = [sys.executable, "-m", "infra.wan", "--one-way-delay-ms", str(self.one_way_delay_ms)]
        for name, port in self._targets.items():
            argv += ["--link", f"{name}={port}"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True
            )
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the WAN proxy did not start; see {self.log_path}")
        ports = json.loads(line)
        self.links = {name: LinkAddress(name, port) for name, port in ports.items()}

    @property
    def pid(self) -> int | None:
        """The proxy's process while it runs (the benchmarks read its CPU time)."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)


async def _serve(one_way_delay_ms: float, targets: dict[str, int]) -> None:
    links = [
        WanLink(name, "127.0.0.1", port, one_way_delay_ms=one_way_delay_ms)
        for name, port in targets.items()
    ]
    for link in links:
        await link.start()
    print(json.dumps({link.name: link.port for link in links}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for link in links:
        await link.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="WAN links between regions (TCP proxies)")
    parser.add_argument("--one-way-delay-ms", type=float, default=0.0)
    parser.add_argument("--link", action="append", default=[], help="NAME=TARGET_PORT (repeat)")
    args = parser.parse_args(argv)
    targets = {}
    for item in args.link:
        name, _, port = item.partition("=")
        targets[name] = int(port)
    import uvloop

    uvloop.run(_serve(args.one_way_delay_ms, targets))


if __name__ == "__main__":
    main()

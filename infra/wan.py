"""WAN emulation between regions: an asyncio TCP proxy per directed link (this kernel has no
netem). Each link adds a one-way delay to every byte in each direction, and can be cut (a
partition: bytes vanish, as they do when packets are dropped, so callers see timeouts rather
than refusals), healed, or made to drop its open connections.

The delay is applied per chunk with its arrival time, so a link keeps its bandwidth: a chunk
waits until ``arrival + delay``, not behind the previous chunk's wait. Buffers are bounded
(``buffer_chunks_max`` per direction; a full buffer stops reading, which is TCP backpressure).

Tests drive links in a thread of their own (``WanThread``), so they can cut and heal them; the
local cluster and the benchmark run them in a process of their own (``WanProcess``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("regiongate.wan")

CHUNK_BYTES_MAX = 64 * 1024
BUFFER_CHUNKS_MAX = 1024
CONNECT_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    blackholed: bool = False

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


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
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.cut_now = False
        self.port = listen_port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self._listen)
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
            self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Reset every open connection now (a middlebox or a peer restarting)."""
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer, blackholed=self.cut_now)
        self._connections.add(connection)
        try:
            if connection.blackholed:
                # A partition: the peer's bytes go nowhere until heal() resets the connection.
                while await reader.read(CHUNK_BYTES_MAX):
                    pass
                return
            await asyncio.sleep(self.one_way_delay_ms / 1000)  # the SYN's trip
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            connection.upstream = up_writer
            connection.tasks = [
                asyncio.create_task(self._pump(connection, reader, up_writer)),
                asyncio.create_task(self._pump(connection, up_reader, writer)),
            ]
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        except (OSError, TimeoutError):
            pass
        finally:
            connection.close()
            self._connections.discard(connection)

    async def _pump(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction, each chunk held for the link's one-way delay."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(BUFFER_CHUNKS_MAX)

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if not chunk:
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.write_eof()
                    return
                if connection.blackholed:
                    continue
                writer.write(chunk)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(CHUNK_BYTES_MAX)
                if connection.blackholed:
                    if not chunk:
                        return
                    continue
                await queue.put((time.monotonic() + self.one_way_delay_ms / 1000, chunk))
                if not chunk:
                    break
            await delivery
        finally:
            delivery.cancel()


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

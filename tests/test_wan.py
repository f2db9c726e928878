"""The WAN proxy (infra.wan) on real sockets: its delay, order, ends, partitions and bounds.

The saga's fault tests and the bank test lean on it, so what it promises is pinned here: every
byte arrives once, in order, no sooner than the link's delay; a cut link carries nothing and a
healed one resets what lived through the cut; ends (half-close, close) travel like bytes; a
target that stops reading stops the client too, with the proxy's own buffer bounded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from infra.wan import BUFFER_BYTES_MAX, WanLink

DELAY_MS = 30.0
QUIET_S = 0.3  # how long "nothing arrives" is watched for


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes everything; on the client's EOF, says "bye" and closes."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"bye")
    await writer.drain()
    writer.close()


@pytest.fixture
async def link():
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    wan = WanLink("eu>us", "127.0.0.1", target_port, one_way_delay_ms=DELAY_MS)
    await wan.start()
    yield wan
    await wan.stop()
    server.close()


async def _connect(link: WanLink):
    return await asyncio.open_connection("127.0.0.1", link.port)


async def _echoed(link: WanLink, probe: bytes):
    """A connection through the link that has carried probe to the target and back."""
    reader, writer = await _connect(link)
    writer.write(probe)
    assert await reader.readexactly(len(probe)) == probe
    return reader, writer


async def test_bytes_arrive_once_in_order_after_the_delay_each_way(link):
    reader, writer = await _echoed(link, b"warm")  # the first trip also opens the connection
    started = time.monotonic()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    assert time.monotonic() - started >= 2 * DELAY_MS / 1000 - 0.002
    # Many writes close together: one stream, in order, nothing lost or doubled.
    sent = b"".join(f"{i:06d}".encode() for i in range(5_000))
    for i in range(0, len(sent), 600):
        writer.write(sent[i : i + 600])
        if i % 6_000 == 0:
            await asyncio.sleep(0)
    assert await reader.readexactly(len(sent)) == sent
    writer.close()


async def test_a_half_close_travels_and_the_answer_still_comes_back(link):
    reader, writer = await _connect(link)
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"last wordsbye"
    writer.close()


async def test_a_cut_link_carries_nothing_and_healing_resets_what_lived_through_it(link):
    reader, writer = await _echoed(link, b"a")
    link.cut()
    writer.write(b"lost")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET_S)
    # A connection opened during the partition never reaches the target either.
    late_reader, late_writer = await _connect(link)
    late_writer.write(b"hello?")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(late_reader.read(1), QUIET_S)
    link.heal()
    for old in (reader, late_reader):
        # Reset: the peer sees its connection end, with nothing of what the cut swallowed.
        assert await asyncio.wait_for(_read_until_end(old), 5) == b""
    _, writer = await _echoed(link, b"again")
    writer.close()
    late_writer.close()


@pytest.mark.parametrize("ending", ["fin", "reset"])
async def test_a_target_that_hangs_up_during_a_cut_is_not_heard_until_heal(ending):
    hang_up = asyncio.Event()

    async def closes_on_cue(reader, writer):
        writer.write(await reader.read(1))
        await hang_up.wait()
        if ending == "reset":  # linger 0: closing sends RST, not FIN
            linger = struct.pack("ii", 1, 0)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    server = await asyncio.start_server(closes_on_cue, "127.0.0.1", 0)
    wan = WanLink("eu>us", "127.0.0.1", server.sockets[0].getsockname()[1], one_way_delay_ms=1)
    await wan.start()
    try:
        reader, _ = await _echoed(wan, b"a")
        wan.cut()
        hang_up.set()  # the target's end meets the partition: the client must see nothing
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), QUIET_S)
        wan.heal()
        assert await asyncio.wait_for(_read_until_end(reader), 5) == b""
    finally:
        await wan.stop()
        server.close()


async def test_dropping_connections_resets_them_and_new_ones_work(link):
    reader, _ = await _echoed(link, b"x")
    link.drop_connections()
    assert await asyncio.wait_for(_read_until_end(reader), 5) == b""
    _, writer = await _echoed(link, b"y")
    writer.close()


async def test_a_target_that_stops_reading_stops_the_client_with_a_bounded_buffer():
    release = asyncio.Event()

    async def stalled(reader, writer):  # never reads
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stalled, "127.0.0.1", 0)
    wan = WanLink("eu>us", "127.0.0.1", server.sockets[0].getsockname()[1], one_way_delay_ms=1)
    await wan.start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", wan.port)
        chunk = b"z" * 65536
        written = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                while written < 512 * 1024 * 1024:
                    writer.write(chunk)
                    await writer.drain()
                    written += len(chunk)
        # Socket buffers on the way hold some; the proxy's queue holds at most its bound.
        assert written < 256 * 1024 * 1024
        (connection,) = wan._connections
        assert connection.upstream._queued_bytes <= BUFFER_BYTES_MAX + len(chunk) * 8
        writer.transport.abort()
    finally:
        release.set()
        await wan.stop()
        server.close()


async def test_a_target_that_refuses_ends_the_client_connection():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    wan = WanLink("eu>us", "127.0.0.1", port, one_way_delay_ms=1)
    await wan.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", wan.port)
        writer.write(b"anyone?")
        assert await asyncio.wait_for(_read_until_end(reader), 5) == b""
        assert not wan._connections
    finally:
        await wan.stop()


async def _read_until_end(reader: asyncio.StreamReader) -> bytes:
    """What arrives before the connection ends (by EOF or by reset)."""
    received = b""
    try:
        while data := await reader.read(65536):
            received += data
    except ConnectionError:
        pass
    return received

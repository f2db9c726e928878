"""The keep-alive pool of the internal hop (region_router.http_pool), against a real aiohttp
server on loopback: answers framed by Content-Length and by chunks, connections reused and
bounded, a timed-out or failed request's connection never reused, a server that closes idle
connections, oversized answers, and headers that would split a request refused before sending.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from region_router.http_pool import HttpPool, UpstreamConnectionError


@pytest.fixture
async def server():
    peers: set[tuple] = set()
    gate = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        body = await request.read()
        return web.Response(
            body=body, headers={"X-Target": request.raw_path, "X-Method": request.method}
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="late")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 10_000)

    async def closing(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_get("/closing", closing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", peers, gate
    gate.set()
    await runner.cleanup()


async def test_answers_by_length_and_by_chunks(server):
    url, _, _ = server
    async with HttpPool() as pool:
        answer = await pool.request(
            url, "POST", "/echo?as_of=2026-01-01T00:00:00%2B00:00", [], b'{"a": 1}', timeout_s=5
        )
        assert answer.status == 200
        assert answer.body == b'{"a": 1}'
        assert answer.headers["x-target"] == "/echo?as_of=2026-01-01T00:00:00%2B00:00"
        assert answer.headers["X-Method"] == "POST"
        chunked = await pool.request(url, "GET", "/chunked", [], b"", timeout_s=5)
        assert chunked.body == b"one two three"


async def test_one_connection_serves_sequential_requests(server):
    url, peers, _ = server
    async with HttpPool() as pool:
        for _ in range(20):
            assert (await pool.request(url, "GET", "/echo", [], b"", timeout_s=5)).status == 200
    assert len(peers) == 1


async def test_concurrency_is_bounded_per_origin(server):
    url, peers, _ = server
    waits: list[float] = []
    async with HttpPool(connections_per_origin_max=3, on_pool_wait=waits.append) as pool:
        answers = await asyncio.gather(
            *(pool.request(url, "GET", "/echo", [], b"", timeout_s=5) for _ in range(30))
        )
    assert all(answer.status == 200 for answer in answers)
    assert len(peers) <= 3
    assert waits, "requests past the bound waited for a connection"


async def test_a_timed_out_connection_is_never_reused(server):
    url, _, gate = server
    async with HttpPool() as pool:
        with pytest.raises(TimeoutError):
            await pool.request(url, "GET", "/slow", [], b"", timeout_s=0.2)
        gate.set()  # the late answer must not be taken for the next request's
        answer = await pool.request(url, "GET", "/echo", [], b"", timeout_s=5)
        assert answer.headers["X-Target"] == "/echo"


async def test_a_connection_the_server_closes_is_replaced(server):
    url, peers, _ = server
    async with HttpPool() as pool:
        assert (await pool.request(url, "GET", "/closing", [], b"", timeout_s=5)).status == 200
        assert (await pool.request(url, "GET", "/closing", [], b"", timeout_s=5)).status == 200
    assert len(peers) == 2


async def test_a_connection_idle_past_its_bound_is_not_reused(server):
    """Closed before the server's own keep-alive timeout could race a request on it."""
    url, peers, _ = server
    async with HttpPool(idle_timeout_s=0.05) as pool:
        assert (await pool.request(url, "GET", "/echo", [], b"", timeout_s=5)).status == 200
        await asyncio.sleep(0.1)  # the bound under test is a time
        assert (await pool.request(url, "GET", "/echo", [], b"", timeout_s=5)).status == 200
    assert len(peers) == 2


async def test_origins_are_bounded(server):
    """Past origins_max, origins with nothing in flight are forgotten (their idle connections
    closed): nodes that autoscaling replaced do not pile up over a process's life."""
    url, peers, _ = server
    async with HttpPool(origins_max=2) as pool:
        for prefix in ("/a", "/b", "/c", "/d"):  # four base URLs, one server
            answer = await pool.request(url + prefix, "GET", "/echo", [], b"", timeout_s=5)
            assert answer.status == 200
            assert len(pool._origins) <= 2
    assert len(peers) == 4


async def test_an_oversized_answer_is_refused(server):
    url, _, _ = server
    async with HttpPool(response_size_max_bytes=4096) as pool:
        with pytest.raises(UpstreamConnectionError, match="4096"):
            await pool.request(url, "GET", "/big", [], b"", timeout_s=5)
        assert (await pool.request(url, "GET", "/echo", [], b"", timeout_s=5)).status == 200


async def test_no_server_is_an_unknown_outcome():
    async with HttpPool(connect_timeout_s=1) as pool:
        with pytest.raises(UpstreamConnectionError):
            await pool.request("http://127.0.0.1:9", "GET", "/", [], b"", timeout_s=2)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/echo HTTP/1.1\r\nX-Evil: 1", []),
        ("/echo", [("traceparent", "00-abc\r\nX-Evil: 1")]),
        ("/echo", [("X-Evil\n", "1")]),
        ("/echo", [("X-Nul", "a\x00b")]),
    ],
    ids=["target", "value", "name", "nul"],
)
async def test_a_header_that_would_split_the_request_is_refused(server, target, headers):
    url, peers, _ = server
    async with HttpPool() as pool:
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            await pool.request(url, "GET", target, headers, b"", timeout_s=5)
    assert not peers  # nothing was sent


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connections_per_origin_max": 0},
        {"origins_max": 0},
        {"connect_timeout_s": 0},
        {"idle_timeout_s": 301},
        {"response_size_max_bytes": 10},
    ],
)
def test_bounds_are_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        HttpPool(**kwargs)

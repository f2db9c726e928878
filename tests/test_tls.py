"""Development TLS: certificates are made once (key mode 0600) and a real aiohttp server serves
HTTPS with them to a client that verifies against the development CA, and only to such a
client."""

from __future__ import annotations

import ssl
import stat

import aiohttp
import pytest
from aiohttp import web

from infra.services import free_port
from infra.tls import ensure_dev_certificates
from runtime.tls import client_context, server_context


async def test_https_with_development_certificates(tmp_path):
    files = ensure_dev_certificates(tmp_path / "tls")
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert ensure_dev_certificates(tmp_path / "tls") == files  # made once, then reused
    first_cert = files.cert.read_bytes()
    assert ensure_dev_certificates(tmp_path / "tls").cert.read_bytes() == first_cert

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(
        runner, "127.0.0.1", port, ssl_context=server_context(files.cert, files.key)
    ).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"https://127.0.0.1:{port}/", ssl=client_context(files.ca_cert)
            ) as response:
                assert (await response.json()) == {"ok": True}
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context())
    finally:
        await runner.cleanup()

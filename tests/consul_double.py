"""A test double of the parts of Consul's HTTP API that the directory uses, for machines where
no Consul agent can be installed. It follows the documented behaviour: ``GET /v1/kv/<prefix>
?recurse`` (base64 values, 404 when nothing matches, ``X-Consul-Index``) and
``GET /v1/health/service/<name>`` (entries with Node, Service and Checks), both as blocking
queries on ``index`` and ``wait``. Tests change its state directly, can make it answer 500, take
it down and bring it back on the same port, and make its index go backwards."""

from __future__ import annotations

import asyncio
import base64
import re

from aiohttp import web

from infra.services import free_port


class ConsulDouble:
    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.services: dict[str, dict] = {}  # service id -> registration and health
        self.index = 1
        self.failing = False
        self.port = free_port()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _bump(self) -> None:
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def put(self, key: str, value: bytes) -> None:
        self.kv[key] = value
        self._bump()

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self.kv if k.startswith(prefix)]:
            del self.kv[key]
        self._bump()

    def register(self, service_id: str, name: str, region: str, port: int, healthy: bool) -> None:
        self.services[service_id] = {
            "name": name,
            "region": region,
            "port": port,
            "healthy": healthy,
        }
        self._bump()

    def clear_services(self) -> None:
        self.services.clear()
        self._bump()

    def go_backwards(self) -> None:
        """What a snapshot restore or a new leader can do to the index."""
        self.index = 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def _block(self, request: web.Request) -> None:
        wanted = int(request.query.get("index", "0") or 0)
        match = re.fullmatch(r"(\d+)s", request.query.get("wait", "300s"))
        wait_s = int(match[1]) if match else 300
        if wanted and wanted >= self.index:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait_s)
            except TimeoutError:
                pass

    async def _kv(self, request: web.Request) -> web.StreamResponse:
        await self._block(request)
        if self.failing:
            return web.Response(status=500, text="rpc error")
        prefix = request.match_info["key"]
        entries = [
            {"Key": key, "Value": base64.b64encode(value).decode(), "ModifyIndex": self.index}
            for key, value in sorted(self.kv.items())
            if key.startswith(prefix)
        ]
        headers = {"X-Consul-Index": str(self.index)}
        if not entries:
            return web.Response(status=404, headers=headers)
        return web.json_response(entries, headers=headers)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        await self._block(request)
        if self.failing:
            return web.Response(status=500, text="rpc error")
        name = request.match_info["name"]
        entries = [
            {
                "Node": {"Node": "node-1", "Address": "127.0.0.1"},
                "Service": {
                    "ID": service_id,
                    "Service": name,
                    "Address": "127.0.0.1",
                    "Port": service["port"],
                    "Meta": {"region": service["region"]},
                },
                "Checks": [
                    {"CheckID": "serfHealth", "Status": "passing"},
                    {
                        "CheckID": f"service:{service_id}",
                        "Status": "passing" if service["healthy"] else "critical",
                    },
                ],
            }
            for service_id, service in sorted(self.services.items())
            if service["name"] == name
        ]
        return web.json_response(entries, headers={"X-Consul-Index": str(self.index)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/kv/{key:.*}", self._kv)
        app.router.add_get("/v1/health/service/{name}", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Take the agent down: connections are refused until start() again."""
        if self._runner is not None:
            self._changed.set()
            await self._runner.cleanup()
            self._runner = None

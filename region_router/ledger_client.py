"""A client for a ledger node's internal API that signs every request with a service key.

The region router's pooled client (endpoint choice, ejection, retries, trace context) is built
on this; the tests and benchmarks use it directly. Requests travel over an ``HttpPool`` of
keep-alive connections (see region_router.http_pool for why not aiohttp's client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from yarl import URL

from region_router.http_pool import HttpPool
from wire.problems import REPLAYED_HEADER
from wire.service_auth import ServiceKey, sign

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class LedgerResponse:
    status: int
    headers: Mapping[str, str]
    """Case-insensitive, as HTTP header names are."""
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None

    @property
    def replayed(self) -> bool:
        return self.headers.get(REPLAYED_HEADER) == "true"


class LedgerClient:
    def __init__(self, base_url: str, key: ServiceKey, pool: HttpPool) -> None:
        self._base_url = base_url.rstrip("/")
        # A node behind a path prefix is served under it; what is signed is what is sent.
        self._prefix = URL(self._base_url).raw_path.rstrip("/")
        self._key = key
        self._pool = pool

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotency_key: str | None = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> LedgerResponse:
        """path is the raw path and query, signed and sent byte for byte as given."""
        payload = raw_body if raw_body is not None else (b"" if body is None else _encode(body))
        all_headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            all_headers["Idempotency-Key"] = idempotency_key
        target = self._prefix + path
        all_headers.update(sign(self._key, method, target, payload, idempotency_key or ""))
        all_headers.update(headers or {})
        response = await self._pool.request(
            self._base_url, method, target, all_headers.items(), payload, timeout_s=timeout_s
        )
        return LedgerResponse(response.status, response.headers, response.body)

    async def get(self, path: str, **kwargs) -> LedgerResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs) -> LedgerResponse:
        return await self.request("POST", path, body, **kwargs)

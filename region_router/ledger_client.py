"""A client for a ledger node's internal API that signs every request with a service key.

The region router's pooled client (endpoint choice, ejection, retries, trace context) is built
on this; the tests and benchmarks use it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from ledger_node.service_auth import ServiceKey, sign

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class LedgerResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"


class LedgerClient:
    def __init__(self, base_url: str, key: ServiceKey, session: aiohttp.ClientSession) -> None:
        self._base_url = base_url.rstrip("/")
        self._key = key
        self._session = session

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
        payload = raw_body if raw_body is not None else (b"" if body is None else _encode(body))
        all_headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            all_headers["Idempotency-Key"] = idempotency_key
        # Sign and send the very same bytes: yarl would otherwise re-encode the query (':' and
        # '+' in an as_of, say) after it was signed, and the ledger would refuse the request.
        url = URL(self._base_url + path, encoded=True)
        all_headers.update(sign(self._key, method, url.raw_path_qs, payload, idempotency_key or ""))
        all_headers.update(headers or {})
        async with self._session.request(
            method,
            url,
            data=payload or None,
            headers=all_headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            return LedgerResponse(response.status, dict(response.headers), await response.read())

    async def get(self, path: str, **kwargs) -> LedgerResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs) -> LedgerResponse:
        return await self.request("POST", path, body, **kwargs)

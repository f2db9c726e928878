"""The webhook endpoints' admin routes (docs/api.md, "Webhooks"): an endpoint belongs to one
region and receives that region's events; ``?region=`` names it (default: this gateway's).
Admins only; the node validates and answers (events.api)."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import Scope
from gateway.context import GATEWAY, pass_through, principal_of
from gateway.errors import Forbidden
from wire.ids import REGION_PATTERN
from wire.problems import ProblemError
from wire.results import VALIDATION_FAILED

BODY_BYTES_MAX = 16 * 1024


async def endpoints(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    principal = principal_of(request)
    if Scope.ADMIN not in principal.scopes:
        raise Forbidden("webhook endpoints need the admin scope")
    await gateway.limiter.check(principal.client_id)
    region = request.query.get("region", gateway.config.region)
    if not REGION_PATTERN.match(region):
        raise ProblemError(VALIDATION_FAILED.at("region"), "a region code")
    if region not in gateway.directory.snapshot().regions:
        raise ProblemError(VALIDATION_FAILED.at("region"), f"no region {region}")
    body = None
    if request.method == "POST":
        raw = await request.read()
        if len(raw) > BODY_BYTES_MAX:
            raise ProblemError(VALIDATION_FAILED, f"at most {BODY_BYTES_MAX} bytes")
        body = await _json_or_empty(request, raw)
    response = await gateway.router.call_in_region(region, request.method, request.path, body)
    return pass_through(response)


async def _json_or_empty(request: web.Request, raw: bytes):
    from gateway.context import json_body

    return await json_body(request) if raw.strip() else {}


ROUTES = [
    ("POST", "/v1/webhook-endpoints", endpoints),
    ("GET", "/v1/webhook-endpoints", endpoints),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}", endpoints),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/{action:rotate-secret|enable|replay}", endpoints),
]

"""Webhook endpoints on a region node's internal API (signed service requests only; the gateway
lets only admins through): register, list, read, rotate the secret, enable again, replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from aiohttp import web

from events import webhooks
from wire.problems import JSON_CONTENT_TYPE, ProblemError, encode
from wire.results import VALIDATION_FAILED, WEBHOOK_ENDPOINT_NOT_FOUND, WEBHOOKS_UNAVAILABLE
from wire.schemas import DECODERS, ReplayIn, WebhookEndpointIn, decode

CONTEXT = web.AppKey("webhooks", Callable)


class WebhooksContext:
    """What the routes need from the node: its pool, config, and (for replays) the streams."""

    def __init__(self, pool: asyncpg.Pool, config, region: str, dispatcher) -> None:
        self.pool = pool
        self.config = config
        self.region = region
        self.dispatcher = dispatcher


def _context(request: web.Request) -> WebhooksContext:
    context = request.app[CONTEXT]()
    if context is None:
        raise ProblemError(WEBHOOKS_UNAVAILABLE)
    return context


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(body), status=status, content_type=JSON_CONTENT_TYPE)


def _invalid(exc: webhooks.WebhookInputError) -> ProblemError:
    return ProblemError(VALIDATION_FAILED.at(exc.field), str(exc))


async def create(request: web.Request) -> web.Response:
    context = _context(request)
    body = decode(DECODERS[WebhookEndpointIn], await request.read())
    async with context.pool.acquire() as connection:
        try:
            endpoint = await webhooks.create_endpoint(connection, body, context.config)
        except webhooks.WebhookInputError as exc:
            raise _invalid(exc) from None
    return _json(endpoint, 201)


async def list_endpoints(request: web.Request) -> web.Response:
    async with _context(request).pool.acquire() as connection:
        return _json({"endpoints": await webhooks.read_endpoints(connection)})


async def read(request: web.Request) -> web.Response:
    async with _context(request).pool.acquire() as connection:
        endpoint = await webhooks.read_endpoints(connection, request.match_info["endpoint_id"])
    if endpoint is None:
        raise ProblemError(WEBHOOK_ENDPOINT_NOT_FOUND)
    return _json(endpoint)


async def change(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    action = request.match_info["action"]
    async with _context(request).pool.acquire() as connection:
        if action == "rotate-secret":
            endpoint = await webhooks.rotate_secret(connection, endpoint_id)
        else:
            endpoint = await webhooks.enable(connection, endpoint_id)
    if endpoint is None:
        raise ProblemError(WEBHOOK_ENDPOINT_NOT_FOUND)
    return _json(endpoint)


async def replay(request: web.Request) -> web.Response:
    context = _context(request)
    body = decode(DECODERS[ReplayIn], await request.read())
    if context.dispatcher is None:
        raise ProblemError(WEBHOOKS_UNAVAILABLE, "this node publishes no events (no Redis)")
    async with context.pool.acquire() as connection:
        result = await webhooks.replay(
            connection,
            context.dispatcher.redis,
            context.region,
            request.match_info["endpoint_id"],
            body.from_,
            body.limit,
        )
    if result is None:
        raise ProblemError(WEBHOOK_ENDPOINT_NOT_FOUND)
    return _json(result)


def add_routes(app: web.Application, context: Callable[[], WebhooksContext | None]) -> None:
    app[CONTEXT] = context
    base = "/v1/webhook-endpoints"
    app.router.add_post(base, create)
    app.router.add_get(base, list_endpoints)
    app.router.add_get(base + "/{endpoint_id}", read)
    app.router.add_post(base + "/{endpoint_id}/{action:rotate-secret|enable}", change)
    app.router.add_post(base + "/{endpoint_id}/replay", replay)

"""The one place that turns errors into problem+json answers over HTTP, for both services: one
middleware that runs a service's request check and its handler, answers a ``ProblemError``
with its problem, aiohttp's routing errors with theirs, asks the service to translate its own
lower-layer errors (a database down, a region unreachable), and answers anything else with a
500 whose cause is logged and never sent."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from wire.problems import PROBLEM_CONTENT_TYPE, ProblemError, problem_body
from wire.results import (
    BODY_TOO_LARGE,
    HEADERS_TOO_LARGE,
    INTERNAL,
    MALFORMED_REQUEST,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Problem,
)

log = logging.getLogger("regiongate.http")

RequestCheck = Callable[[web.Request], Awaitable[None]]
Translate = Callable[[web.Request, Exception], ProblemError | None]
"""A service's own errors as problems (None: not one of its errors, so a 500)."""


def problem_response(
    problem: Problem,
    detail: str | None = None,
    *,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 answer; 429 and 503 carry Retry-After."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return web.Response(
        status=problem.status,
        body=problem_body(problem, detail, **extra),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def error_response(error: ProblemError) -> web.Response:
    return problem_response(
        error.problem,
        error.detail,
        retry_after_s=error.retry_after_s,
        headers=error.headers,
        **error.extra,
    )


def protocol_problem(status: int, message: str) -> tuple[int, bytes]:
    """The answer to a request the HTTP server could not parse (runtime.serving's runner)."""
    problem = {431: HEADERS_TOO_LARGE, 413: BODY_TOO_LARGE}.get(status)
    if problem is None:
        problem = MALFORMED_REQUEST if status < 500 else INTERNAL
    # The parser's own words, short; never for a 5xx (no internals) nor a long header (it
    # could quote a token back into a log or a proxy's cache).
    detail = message[:200] if problem is MALFORMED_REQUEST else None
    return problem.status, problem_body(problem, detail)


def problem_middleware(check: RequestCheck | None = None, translate: Translate | None = None):
    """The one middleware: runs check (authentication) and the handler, and turns every error
    into a problem answer. One middleware rather than two saves a wrapper per request."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            if check is not None:
                await check(request)
            return await handler(request)
        except ProblemError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return problem_response(BODY_TOO_LARGE)
        except web.HTTPNotFound:
            return problem_response(NOT_FOUND)
        except web.HTTPMethodNotAllowed:
            return problem_response(METHOD_NOT_ALLOWED)
        except web.HTTPException:
            raise
        except Exception as exc:
            translated = translate(request, exc) if translate is not None else None
            if translated is not None:
                return error_response(translated)
            log.exception("unhandled error on %s %s", request.method, request.path)
            return problem_response(INTERNAL)

    return middleware

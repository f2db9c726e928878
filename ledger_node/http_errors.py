"""The one place that turns errors into problem+json responses on the ledger's HTTP port."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from ledger_node import render
from ledger_node.errors import (
    DatabaseUnavailable,
    LedgerError,
    OverloadedError,
    map_database_error,
)
from ledger_node.results import (
    BODY_TOO_LARGE,
    DATABASE_UNAVAILABLE,
    HEADERS_TOO_LARGE,
    INTERNAL,
    MALFORMED_REQUEST,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    OVERLOADED,
    Problem,
)

log = logging.getLogger("regiongate.ledger.http")

RETRY_AFTER_UNAVAILABLE_S = 1
_FIELD_IN_MESSAGE = re.compile(r"at `\$\.?([A-Za-z0-9_.\[\]]*)`")


class ProblemError(Exception):
    """Raised by handlers to answer with a problem; carries its context."""

    def __init__(self, problem: Problem, detail: str | None = None, **extra) -> None:
        super().__init__(detail or problem.title)
        self.problem = problem
        self.detail = detail
        self.extra = extra


def problem_response(
    problem: Problem,
    detail: str | None = None,
    *,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
    **extra,
) -> web.Response:
    """An RFC 9457 answer; the gateway uses it too, so both layers speak alike."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return web.Response(
        status=problem.status,
        body=render.problem_body(problem, detail, **extra),
        content_type=render.PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def protocol_problem(status: int, message: str) -> tuple[int, bytes]:
    """The answer to a request the HTTP server could not parse (infra.serving's runner)."""
    problem = {431: HEADERS_TOO_LARGE, 413: BODY_TOO_LARGE}.get(status)
    if problem is None:
        problem = MALFORMED_REQUEST if status < 500 else INTERNAL
    # The parser's own words, short; never for a 5xx (no internals) nor a long header (it
    # could quote a token back into a log or a proxy's cache).
    detail = message[:200] if problem is MALFORMED_REQUEST else None
    return problem.status, render.problem_body(problem, detail)


def field_of(message: str) -> str | None:
    """The field a msgspec validation message names ('... - at `$.amount`' -> 'amount')."""
    match = _FIELD_IN_MESSAGE.search(message)
    return match[1] if match and match[1] else None


RequestCheck = Callable[[web.Request], Awaitable[None]]


def problem_middleware(check: RequestCheck | None = None):
    """The one middleware: runs check (authentication) and the handler, and turns every error
    into a problem response. One middleware rather than two saves a wrapper per request."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            if check is not None:
                await check(request)
            return await handler(request)
        except Exception as exc:
            return _problem_for(request, exc)

    return middleware


def _problem_for(request: web.Request, error: Exception) -> web.StreamResponse:
    try:
        raise error
    except ProblemError as exc:
        return problem_response(exc.problem, exc.detail, **exc.extra)
    except web.HTTPRequestEntityTooLarge:
        return problem_response(BODY_TOO_LARGE)
    except web.HTTPNotFound:
        return problem_response(NOT_FOUND)
    except web.HTTPMethodNotAllowed:
        return problem_response(METHOD_NOT_ALLOWED)
    except OverloadedError as exc:
        return problem_response(OVERLOADED, str(exc), retry_after_s=exc.retry_after_s)
    except DatabaseUnavailable:
        return problem_response(DATABASE_UNAVAILABLE, retry_after_s=RETRY_AFTER_UNAVAILABLE_S)
    except TimeoutError:
        return problem_response(
            DATABASE_UNAVAILABLE,
            "the ledger did not answer in time; the outcome is unknown, retry with the same "
            "idempotency key",
            retry_after_s=RETRY_AFTER_UNAVAILABLE_S,
        )
    except web.HTTPException:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        if isinstance(map_database_error(exc), DatabaseUnavailable):
            return problem_response(DATABASE_UNAVAILABLE, retry_after_s=RETRY_AFTER_UNAVAILABLE_S)
        log.exception("database error on %s %s", request.method, request.path)
        return problem_response(INTERNAL)
    except LedgerError:
        log.exception("ledger error on %s %s", request.method, request.path)
        return problem_response(INTERNAL)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(INTERNAL)

"""The ledger's own errors as problems, for the one problem middleware (runtime.http_problems):
a queue at its bound, a database down or slow, a database error mapped by SQLSTATE."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from ledger_node.errors import DatabaseUnavailable, OverloadedError, map_database_error
from wire.problems import ProblemError
from wire.results import DATABASE_UNAVAILABLE, OVERLOADED

RETRY_AFTER_UNAVAILABLE_S = 1


def translate(request: web.Request, error: Exception) -> ProblemError | None:
    """The problem for a ledger error, or None (the middleware answers 500 and logs it)."""
    if isinstance(error, OverloadedError):
        return ProblemError(OVERLOADED, str(error), retry_after_s=error.retry_after_s)
    if isinstance(error, DatabaseUnavailable):
        return ProblemError(DATABASE_UNAVAILABLE, retry_after_s=RETRY_AFTER_UNAVAILABLE_S)
    if isinstance(error, TimeoutError):
        return ProblemError(
            DATABASE_UNAVAILABLE,
            "the ledger did not answer in time; the outcome is unknown, retry with the same "
            "idempotency key",
            retry_after_s=RETRY_AFTER_UNAVAILABLE_S,
        )
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError | OSError) and isinstance(
        map_database_error(error), DatabaseUnavailable
    ):
        return ProblemError(DATABASE_UNAVAILABLE, retry_after_s=RETRY_AFTER_UNAVAILABLE_S)
    return None

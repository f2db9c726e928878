"""Errors of the ledger node: faults and misuse. Expected business outcomes are not here: they
are members of ``wire.results.Result``.

Lower-layer errors (asyncpg) are mapped at the boundary through one table keyed by SQLSTATE,
never by message text, and always ``raise ... from exc`` so the cause stays in the traceback.
"""

from __future__ import annotations

import asyncpg

from wire import errors as wire_errors


class LedgerError(Exception):
    """Base of every ledger node fault."""


# One configuration error for every layer (a service's config, its keyring): wire's.
ConfigError = wire_errors.ConfigError


class InvariantViolation(LedgerError):
    """A money invariant failed. Never expected: the transaction that saw it is rolled back."""


class RetryableDatabaseError(LedgerError):
    """A transaction lost a race (deadlock, serialization, duplicate key from a concurrent
    writer); running it again from the start is safe and is expected to succeed."""


class DatabaseUnavailable(LedgerError):
    """The database could not be reached or the connection broke. For a write the outcome may be
    unknown: the client must retry with the same idempotency key, which makes the retry safe."""


class OverloadedError(LedgerError):
    """A bounded queue is full; the caller should back off and retry."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# SQLSTATE -> the error class it maps to. Codes from PostgreSQL's errcodes appendix.
SQLSTATE_MAP: dict[str, type[LedgerError]] = {
    "40001": RetryableDatabaseError,  # serialization_failure
    "40P01": RetryableDatabaseError,  # deadlock_detected
    "23505": RetryableDatabaseError,  # unique_violation: a concurrent batch claimed the same key
    "55P03": RetryableDatabaseError,  # lock_not_available
    "26000": RetryableDatabaseError,  # invalid_sql_statement_name: the batch write, unprepared
    "57P01": DatabaseUnavailable,  # admin_shutdown
    "57P02": DatabaseUnavailable,  # crash_shutdown
    "57P03": DatabaseUnavailable,  # cannot_connect_now
    "08000": DatabaseUnavailable,  # connection_exception
    "08003": DatabaseUnavailable,  # connection_does_not_exist
    "08006": DatabaseUnavailable,  # connection_failure
    "57014": DatabaseUnavailable,  # query_canceled (statement_timeout)
}


def map_database_error(exc: BaseException) -> LedgerError:
    """Translate an asyncpg or OS-level error into the ledger's own error classes."""
    if isinstance(exc, LedgerError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is not None:
        mapped = SQLSTATE_MAP.get(sqlstate)
        if mapped is not None:
            return mapped(f"database error {sqlstate}: {exc}")
        return LedgerError(f"database error {sqlstate}: {exc}")
    if isinstance(
        exc,
        OSError
        | ConnectionError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.ConnectionDoesNotExistError,
    ):
        return DatabaseUnavailable(f"database unreachable: {exc!r}")
    return LedgerError(f"unexpected database error: {exc!r}")

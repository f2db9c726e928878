"""Errors of the gateway: who the caller is, what it may do, and how fast. Each is a problem
(wire.problems.ProblemError) and carries what its answer needs; the gateway's configuration
errors are not, since they stop a process before it serves."""

from __future__ import annotations

from wire.problems import ProblemError
from wire.results import FORBIDDEN, RATE_LIMITED, UNAUTHENTICATED


class GatewayError(Exception):
    """Base of the gateway's faults that are not a caller's (its configuration)."""


class Unauthenticated(ProblemError):
    """No valid bearer token: 401 with WWW-Authenticate."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            UNAUTHENTICATED, detail, headers={"WWW-Authenticate": 'Bearer realm="regiongate"'}
        )


class Forbidden(ProblemError):
    """A valid caller without the right to this account or operation: 403."""

    def __init__(self, detail: str) -> None:
        super().__init__(FORBIDDEN, detail)


class RateLimited(ProblemError):
    """Over a rate limit: 429 with Retry-After."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(RATE_LIMITED, detail, retry_after_s=retry_after_s)

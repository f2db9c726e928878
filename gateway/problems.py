"""The gateway's own errors as problems, for the one problem middleware
(runtime.http_problems): a region the router cannot reach, an account id it cannot route."""

from __future__ import annotations

from aiohttp import web

from region_router.router import RegionUnavailable, UnroutableAccount
from wire.problems import ProblemError
from wire.results import ACCOUNT_NOT_FOUND, REGION_UNAVAILABLE


def translate(request: web.Request, error: Exception) -> ProblemError | None:
    if isinstance(error, RegionUnavailable):
        return ProblemError(
            REGION_UNAVAILABLE,
            f"region {error.region}: {error.reason}",
            retry_after_s=error.retry_after_s,
            region=error.region,
        )
    if isinstance(error, UnroutableAccount):
        return ProblemError(ACCOUNT_NOT_FOUND)
    return None

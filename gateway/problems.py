"""The one place that turns gateway errors into problem+json responses. Problem types share the
ledger's namespace, so a client sees one vocabulary whichever layer answered; the ledger's own
problem answers are passed through unchanged."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.errors import Forbidden, RateLimited, Unauthenticated
from ledger_node.http_errors import problem_response
from ledger_node.results import (
    BODY_TOO_LARGE,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Problem,
)
from region_router.router import RegionUnavailable, UnroutableAccount

log = logging.getLogger("regiongate.gateway")

UNAUTHENTICATED = Problem(401, "unauthenticated", "Missing or invalid bearer token")
FORBIDDEN = Problem(403, "forbidden", "Not allowed for this caller")
RATE_LIMITED = Problem(429, "rate-limited", "Too many requests")
REGION_UNAVAILABLE = Problem(
    503, "region-unavailable", "The account's home region cannot be reached; retry later"
)
ACCOUNT_NOT_FOUND = Problem(404, "account-not-found", "Account not found", "account_id")


class GatewayProblem(Exception):
    def __init__(self, problem: Problem, detail: str | None = None, **extra) -> None:
        super().__init__(detail or problem.title)
        self.problem = problem
        self.detail = detail
        self.extra = extra


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayProblem as exc:
        return problem_response(exc.problem, exc.detail, **exc.extra)
    except Unauthenticated as exc:
        # Once, at info level, with the reason and never the token: a bad token is a caller's
        # mistake (or a probe), not the gateway's fault.
        log.info("unauthenticated %s %s: %s", request.method, request.path, exc)
        return problem_response(
            UNAUTHENTICATED, str(exc), headers={"WWW-Authenticate": 'Bearer realm="regiongate"'}
        )
    except Forbidden as exc:
        return problem_response(FORBIDDEN, str(exc))
    except RateLimited as exc:
        return problem_response(RATE_LIMITED, str(exc), retry_after_s=exc.retry_after_s)
    except RegionUnavailable as exc:
        return problem_response(
            REGION_UNAVAILABLE,
            f"region {exc.region}: {exc.reason}",
            retry_after_s=exc.retry_after_s,
            region=exc.region,
        )
    except UnroutableAccount:
        return problem_response(ACCOUNT_NOT_FOUND)
    except web.HTTPRequestEntityTooLarge:
        return problem_response(BODY_TOO_LARGE)
    except web.HTTPNotFound:
        return problem_response(NOT_FOUND)
    except web.HTTPMethodNotAllowed:
        return problem_response(METHOD_NOT_ALLOWED)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(INTERNAL)

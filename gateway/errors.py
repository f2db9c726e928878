"""Errors of the gateway that become problem responses: who the caller is, what it may do, and
how fast. Each carries what the problem+json answer needs."""


class GatewayError(Exception):
    """Base of every gateway error."""


class Unauthenticated(GatewayError):
    """No valid bearer token: 401 with WWW-Authenticate."""


class Forbidden(GatewayError):
    """A valid caller without the right to this account or operation: 403."""


class RateLimited(GatewayError):
    """Over a rate limit: 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

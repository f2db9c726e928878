"""Errors of the infra package: starting and stopping the services regiongate runs itself."""


class InfraError(Exception):
    """Base of every infra fault."""


class ServiceStartError(InfraError):
    """A local service (PostgreSQL, Redis, a ledger node) could not be started; says why."""

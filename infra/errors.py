"""Errors of the infra package: starting and stopping the services regiongate runs itself."""


class InfraError(Exception):
    """Base of every infra fault."""


class ServiceStartError(InfraError):
    """A local service (PostgreSQL, Redis, a ledger node) could not be started; says why."""


class ClusterNotRunning(InfraError):
    """A command for the local cluster found none running in its data dir."""


class ClusterAlreadyRunning(InfraError):
    """A second local cluster was started on a data dir one is running from."""

"""Errors of the region router: directory records that cannot be used, and routing faults."""


class RouterError(Exception):
    """Base of every region router fault."""


class DirectoryError(RouterError):
    """Directory records are malformed or inconsistent; the message names the record."""

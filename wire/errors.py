"""Errors of the bottom layer: a configuration or key file that cannot be used. Every service
stops on one at start, with a message that names the field and the value."""


class WireError(Exception):
    """Base of the wire layer's errors."""


class ConfigError(WireError):
    """A configuration (a service's, its keyring) is invalid; the message says which field."""

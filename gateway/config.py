"""Gateway configuration: frozen dataclasses, loaded from YAML and validated once at start.
Secrets (service keys, TLS keys) are files named here, never values in the YAML."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import GatewayError
from wire.ids import REGION_PATTERN


class GatewayConfigError(GatewayError):
    """The gateway's configuration is invalid; the message names the field."""


def _check(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GatewayConfigError(f"{name} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    per_client_rate_per_s: float = 500.0
    per_client_burst: int = 1000
    per_account_rate_per_s: float = 50.0
    per_account_burst: int = 100
    timeout_ms: int = 50
    """Longest the limiter may take; past it the request goes through (counted)."""
    key_prefix: str = "rg:rl:"
    """Redis key prefix; gateways that share limits share it."""

    def __post_init__(self) -> None:
        _check("rate_limit.per_client_rate_per_s", self.per_client_rate_per_s, 0.001, 1e6)
        _check("rate_limit.per_client_burst", self.per_client_burst, 1, 10_000_000)
        _check("rate_limit.per_account_rate_per_s", self.per_account_rate_per_s, 0.001, 1e6)
        _check("rate_limit.per_account_burst", self.per_account_burst, 1, 10_000_000)
        _check("rate_limit.timeout_ms", self.timeout_ms, 1, 5_000)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    region: str
    jwks_file: str
    audience: str
    issuer: str
    service_keys_file: str
    redis_url: str
    directory_file: str | None = None
    """The YAML directory; or, instead, consul (region_router.backends.build_directory)."""
    consul: dict | None = None
    """Consul's directory: address, prefix, service, datacenters, token_file, wait_s..."""
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    metrics_port: int | None = None
    """Admin port for Prometheus (/metrics); worker i serves metrics_port + i."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    """Both or neither; without them the gateway serves plain HTTP (tests only)."""
    body_size_max_bytes: int = 16 * 1024
    attempt_timeout_ms: int = 3_000
    call_timeout_ms: int = 8_000
    retries_max: int = 2
    operator_cache_size_max: int = 100_000
    """Accounts whose operator (for game-server authorisation) is remembered."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.region, str) or not REGION_PATTERN.match(self.region):
            raise GatewayConfigError(f"region must match {REGION_PATTERN.pattern}")
        _check("port", self.port, 0, 65535)
        _check("workers", self.workers, 1, 64)
        if self.metrics_port is not None:
            _check("metrics_port", self.metrics_port, 1, 65535 - self.workers)
        _check("body_size_max_bytes", self.body_size_max_bytes, 256, 1024 * 1024)
        _check("attempt_timeout_ms", self.attempt_timeout_ms, 10, 120_000)
        _check("call_timeout_ms", self.call_timeout_ms, 10, 300_000)
        _check("retries_max", self.retries_max, 0, 10)
        _check("operator_cache_size_max", self.operator_cache_size_max, 1, 10_000_000)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise GatewayConfigError("tls_cert_file and tls_key_file go together")
        if (self.directory_file is None) == (self.consul is None):
            raise GatewayConfigError("configure exactly one of directory_file and consul")


def gateway_config_from_dict(raw: dict[str, Any]) -> GatewayConfig:
    raw = dict(raw)
    if "rate_limit" in raw:
        known = {f.name for f in fields(RateLimitConfig)}
        unknown = set(raw["rate_limit"]) - known
        if unknown:
            raise GatewayConfigError(f"rate_limit: unknown keys {sorted(unknown)}")
        raw["rate_limit"] = RateLimitConfig(**raw["rate_limit"])
    known = {f.name for f in fields(GatewayConfig)}
    unknown = set(raw) - known
    if unknown:
        raise GatewayConfigError(f"gateway: unknown keys {sorted(unknown)}")
    try:
        return GatewayConfig(**raw)
    except TypeError as exc:
        raise GatewayConfigError(f"gateway: {exc}") from exc


def load_gateway_config(path: str | Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GatewayConfigError(f"cannot read gateway config {path}: {exc}") from exc
    if isinstance(raw, dict) and "gateway" in raw:
        raw = raw["gateway"]
    if not isinstance(raw, dict):
        raise GatewayConfigError("gateway config must be a mapping")
    return gateway_config_from_dict(raw)

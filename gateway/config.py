"""Gateway configuration: frozen msgspec structs whose annotations carry every bound, loaded
from YAML and validated once at start by the one loader (runtime.config). Secrets (service
keys, TLS keys) are files named here, never values in the YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta, Struct, field

from identity.usernames import UsernameRules
from region_router.consul_directory import ConsulSettings
from runtime.config import check_metrics_port, config_from_dict, load_config
from wire.errors import ConfigError
from wire.ids import REGION_PATTERN

RatePerSecond = Annotated[float, Meta(ge=0.001, le=1e6)]
Burst = Annotated[int, Meta(ge=1, le=10_000_000)]


class RateLimitConfig(Struct, frozen=True, forbid_unknown_fields=True):
    per_client_rate_per_s: RatePerSecond = 500.0
    per_client_burst: Burst = 1000
    per_account_rate_per_s: RatePerSecond = 50.0
    per_account_burst: Burst = 100
    timeout_ms: Annotated[int, Meta(ge=1, le=5_000)] = 50
    """Longest the limiter may take; past it the request goes through (counted)."""
    lookup_rate_per_s: RatePerSecond = 20.0
    """Username lookups and availability checks per client: they are an enumeration surface,
    so they have a bucket of their own, smaller than the client's."""
    lookup_burst: Burst = 50
    key_prefix: str = "rg:rl:"
    """Redis key prefix; gateways that share limits share it."""


class GatewayConfig(Struct, frozen=True, forbid_unknown_fields=True):
    region: Annotated[str, Meta(pattern=REGION_PATTERN.pattern)]
    jwks_file: str
    audience: str
    issuer: str
    service_keys_file: str
    redis_url: str
    directory_file: str | None = None
    """The YAML directory; or, instead, consul (region_router.backends.build_directory)."""
    consul: ConsulSettings | None = None
    """Consul's directory: address, prefix, service, datacenters, token_file, wait_s..."""
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8443
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    metrics_port: int | None = None
    """Admin port for Prometheus (/metrics); worker i serves metrics_port + i."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    """Both or neither; without them the gateway serves plain HTTP (tests only)."""
    body_size_bytes_max: Annotated[int, Meta(ge=256, le=1024 * 1024)] = 16 * 1024
    attempt_timeout_ms: Annotated[int, Meta(ge=10, le=120_000)] = 3_000
    call_timeout_ms: Annotated[int, Meta(ge=10, le=300_000)] = 8_000
    retries_max: Annotated[int, Meta(ge=0, le=10)] = 2
    operator_cache_size_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Accounts whose operator (for game-server authorisation) is remembered."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    usernames: UsernameRules = field(default_factory=UsernameRules)
    """The username rules, as the regions' nodes have them: a name they would refuse is
    refused here, with its rule, before any hop."""
    player_cache_size_max: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Players whose home region (which never changes) is remembered."""
    lookups_from_view: bool = False
    """Answer a public username lookup from this region's view of every region's players (kept
    from their events: no WAN hop, but a moment behind a creation or rename), and ask the
    name's owner only for a name the view does not have. Off: every lookup asks the owner."""

    def __post_init__(self) -> None:
        check_metrics_port(self.metrics_port, self.workers)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if (self.directory_file is None) == (self.consul is None):
            raise ConfigError("configure exactly one of directory_file and consul")


def gateway_config_from_dict(raw: dict[str, Any]) -> GatewayConfig:
    return config_from_dict(raw, GatewayConfig, "gateway")


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway's YAML config file (its ``gateway:`` section)."""
    return load_config(path, "gateway", GatewayConfig)

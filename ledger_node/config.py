"""Ledger node configuration: frozen msgspec structs whose annotations carry every bound, loaded
from YAML and validated once at start by the one loader (runtime.config), which names the field
of any error. Secrets (the database password, the service keys) never live in the YAML: they
come from the environment or from files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta, Struct, field

from events.config import EventsConfig
from identity.config import IdentityConfig
from ledger_node.errors import ConfigError
from region_router.consul_directory import ConsulSettings
from runtime.config import check_metrics_port, config_from_dict, load_config
from runtime.sagas import SagaConfig
from wire.ids import CURRENCY_PATTERN, REGION_PATTERN
from wire.limits import AMOUNT_MAX_LIMIT


class Currency(Struct, frozen=True, forbid_unknown_fields=True):
    code: Annotated[str, Meta(pattern=CURRENCY_PATTERN.pattern)]
    """ISO 4217 code, or a configured non-ISO unit (for example GCOIN)."""
    exponent: Annotated[int, Meta(ge=0, le=18)]
    """Digits after the decimal point of one major unit; amounts are in minor units."""


class BatchConfig(Struct, frozen=True, forbid_unknown_fields=True):
    size_max: Annotated[int, Meta(ge=1, le=8192)] = 512
    """Most operations decided and committed in one database transaction."""
    wait_us_max: Annotated[int, Meta(ge=0, le=100_000)] = 0
    """How long a batch waits for more operations after its first, in microseconds. 0 takes what
    is queued: under load the queue fills while the previous batch commits (group commit)."""
    queue_depth_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 20_000
    """Operations waiting for a batch; past this, requests get 503 overloaded at once."""
    retry_attempts_max: Annotated[int, Meta(ge=0, le=20)] = 5
    """Times a batch is run again after losing a race (deadlock, concurrent duplicate key)."""
    writers: Annotated[int, Meta(ge=1, le=16)] = 1
    """Batches in flight at once, each on its own connection. Per account, order is arrival
    order either way: a later batch that touches an account waits for the earlier batch's row
    lock and then reads its committed state. One is the default: it measured best on 2 cores
    (docs/decisions/0004); more may pay where the database has cores of its own."""

    idle_hold_ms: Annotated[int, Meta(ge=0, le=60_000)] = 1000
    """How long a writer whose queue ran dry keeps its connection, with the next batch's
    transaction already open (empty: no snapshot, no locks, no transaction id), before it rolls
    that back and gives the connection to the pool. Work that comes within it starts with its
    locks at once; without it, a lightly loaded node paid a BEGIN round trip on every batch,
    and a ROLLBACK and the pool's reset between batches (the saga's hold and its post each pay
    it: bench_saga). 0 gives the connection back at once. Keep it below the database's
    idle_in_transaction_session_timeout, if one is set: a held session that the server ends is
    replaced before the next batch uses it, but one ended just as that batch starts fails it
    (503, and the client retries with its key)."""


class DatabaseConfig(Struct, frozen=True, forbid_unknown_fields=True):
    dsn: str
    """postgresql:// URL without a password; the password comes from password_file or the
    REGIONGATE_DATABASE_PASSWORD environment variable."""
    password_file: str | None = None
    pool_size_max: Annotated[int, Meta(ge=1, le=256)] = 8
    """Connections for reads and for the writes that move no money (accounts, statuses); the
    batch writers have their own (batch.writers)."""
    connect_timeout_ms: Annotated[int, Meta(ge=100, le=120_000)] = 5_000
    statement_timeout_ms: Annotated[int, Meta(ge=100, le=600_000)] = 10_000

    def __post_init__(self) -> None:
        if not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"database.dsn must be a postgresql:// URL, got {self.dsn!r}")
        if re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", self.dsn):
            raise ConfigError("database.dsn must not carry a password; use password_file")

    def password(self) -> str | None:
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return os.environ.get("REGIONGATE_DATABASE_PASSWORD")


class LedgerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    region: Annotated[str, Meta(pattern=REGION_PATTERN.pattern)]
    database: DatabaseConfig
    currencies: Annotated[tuple[Currency, ...], Meta(min_length=1)]
    peers: tuple[Annotated[str, Meta(pattern=REGION_PATTERN.pattern)], ...] = ()
    """Other regions; each gets a transit account per currency for cross-region money."""
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8101
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    """Processes serving the port (SO_REUSEPORT); each runs its own batcher."""
    metrics_port: int | None = None
    """Admin port for Prometheus (/metrics); worker i serves metrics_port + i."""
    service_keys_file: str | None = None
    """File of 'key_id: secret' lines; else REGIONGATE_SERVICE_KEYS='id:secret,...'."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    directory_file: str | None = None
    """The directory (YAML) that locates peer regions' ledger nodes, for cross-region transfers;
    or consul instead. With neither, this node refuses cross-region transfers."""
    consul: ConsulSettings | None = None
    """Consul's directory (region_router.backends.build_directory)."""
    saga: SagaConfig = field(default_factory=SagaConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    """Players and usernames (identity/), served by this node from this database, with the
    directory's slot map; off without a directory."""
    peer_key_ids: tuple[str, ...] = ()
    """Service key ids of other regions' ledgers. When set, saga steps are accepted only when
    signed with one of them (a gateway's key cannot credit an account out of a transit
    account), and this node signs its own saga steps with the first."""
    amount_max: Annotated[int, Meta(ge=1, le=AMOUNT_MAX_LIMIT)] = AMOUNT_MAX_LIMIT
    body_size_bytes_max: Annotated[int, Meta(ge=256, le=1024 * 1024)] = 16 * 1024
    request_timeout_ms: Annotated[int, Meta(ge=100, le=120_000)] = 10_000
    pending_timeout_s_max: Annotated[int, Meta(ge=1, le=365 * 24 * 3600)] = 7 * 24 * 3600
    expiry_interval_ms: Annotated[int, Meta(ge=10, le=3_600_000)] = 1_000
    expiry_batch_max: Annotated[int, Meta(ge=1, le=10_000)] = 500
    history_limit_max: Annotated[int, Meta(ge=1, le=10_000)] = 500
    signature_skew_s_max: Annotated[int, Meta(ge=1, le=3600)] = 300
    """How far a signed request's timestamp may be from our clock, in seconds."""

    def __post_init__(self) -> None:
        if self.region in self.peers:
            raise ConfigError(f"peers must be other region codes, got {self.region!r}")
        codes = [currency.code for currency in self.currencies]
        if len(set(codes)) != len(codes):
            raise ConfigError(f"currencies must not repeat a code, got {codes}")
        check_metrics_port(self.metrics_port, self.workers)

    def currency(self, code: str) -> Currency | None:
        for currency in self.currencies:
            if currency.code == code:
                return currency
        return None


def ledger_config_from_dict(raw: dict[str, Any]) -> LedgerConfig:
    return config_from_dict(raw, LedgerConfig, "ledger")


def load_ledger_config(path: str | Path) -> LedgerConfig:
    """Read and validate a ledger node's YAML config file (its ``ledger:`` section)."""
    return load_config(path, "ledger", LedgerConfig)

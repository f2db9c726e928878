"""Ledger node configuration: frozen dataclasses, loaded from YAML and validated once at start.

Every bound is explicit, carries its unit in its name, and is rejected at load with a message
naming the field and the value when it is out of range. Secrets (the database password, the
service keys) never live in the YAML: they come from the environment or from files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ledger_node.errors import ConfigError
from wire.ids import CURRENCY_PATTERN, REGION_PATTERN
from wire.limits import AMOUNT_MAX_LIMIT


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    """ISO 4217 code, or a configured non-ISO unit (for example GCOIN)."""
    exponent: int
    """Digits after the decimal point of one major unit; amounts are in minor units."""

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not CURRENCY_PATTERN.match(self.code):
            raise ConfigError(
                f"currency code must match {CURRENCY_PATTERN.pattern}, got {self.code!r}"
            )
        _check_range(f"currencies[{self.code}].exponent", self.exponent, 0, 18)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    size_max: int = 512
    """Most operations decided and committed in one database transaction."""
    wait_max_us: int = 0
    """How long a batch waits for more operations after its first, in microseconds. 0 takes what
    is queued: under load the queue fills while the previous batch commits (group commit)."""
    queue_depth_max: int = 20_000
    """Operations waiting for a batch; past this, requests get 503 overloaded at once."""
    retry_attempts_max: int = 5
    """Times a batch is run again after losing a race (deadlock, concurrent duplicate key)."""
    writers: int = 1
    """Batches in flight at once, each on its own connection. Per account, order is arrival
    order either way: a later batch that touches an account waits for the earlier batch's row
    lock and then reads its committed state. One is the default: it measured best on 2 cores
    (docs/decisions/0004); more may pay where the database has cores of its own."""

    idle_hold_ms: int = 1000
    """How long a writer whose queue ran dry keeps its connection, with the next batch's
    transaction already open (empty: no snapshot, no locks, no transaction id), before it rolls
    that back and gives the connection to the pool. Work that comes within it starts with its
    locks at once; without it, a lightly loaded node paid a BEGIN round trip on every batch,
    and a ROLLBACK and the pool's reset between batches (the saga's hold and its post each pay
    it: bench_saga). 0 gives the connection back at once. Keep it below the database's
    idle_in_transaction_session_timeout, if one is set: a held session that the server ends is
    replaced before the next batch uses it, but one ended just as that batch starts fails it
    (503, and the client retries with its key)."""

    def __post_init__(self) -> None:
        _check_range("batch.size_max", self.size_max, 1, 8192)
        _check_range("batch.wait_max_us", self.wait_max_us, 0, 100_000)
        _check_range("batch.queue_depth_max", self.queue_depth_max, 1, 1_000_000)
        _check_range("batch.retry_attempts_max", self.retry_attempts_max, 0, 20)
        _check_range("batch.writers", self.writers, 1, 16)
        _check_range("batch.idle_hold_ms", self.idle_hold_ms, 0, 60_000)


@dataclass(frozen=True, slots=True)
class SagaConfig:
    """Bounds of the cross-region transfer saga (DESIGN.md). Every wait and retry is finite:
    step 2 is retried with jittered backoff until deadline_ms, then cancelled; the cancel is
    retried at the backoff cap until the destination answers (it must, for the hold to end)."""

    deadline_ms: int = 30_000
    """From the hold to the cancel: past it, the saga stops retrying step 2 and cancels it."""
    step_timeout_ms: int = 3_000
    """One call to the destination's ledger (several WAN round trips at most)."""
    retry_backoff_base_ms: int = 50
    retry_backoff_cap_ms: int = 2_000
    lease_ms: int = 5_000
    """How long a node owns a saga it drives; another node (or this one restarted) takes over
    an unfinished saga once its lease has run out."""
    recovery_interval_ms: int = 1_000
    """How often a node looks for unfinished sagas whose lease ran out."""
    recovery_batch_max: int = 200
    running_max: int = 4_096
    """Sagas one node process drives at once; past it, new cross-region transfers get 503."""
    wait_ms: int = 2_000
    """How long a cross-region request waits for its saga to end before answering 202. Keep
    it below the gateway's attempt_timeout_ms, or the gateway gives up on the answer first."""

    def __post_init__(self) -> None:
        _check_range("saga.deadline_ms", self.deadline_ms, 100, 86_400_000)
        _check_range("saga.step_timeout_ms", self.step_timeout_ms, 10, 120_000)
        _check_range("saga.retry_backoff_base_ms", self.retry_backoff_base_ms, 1, 60_000)
        _check_range(
            "saga.retry_backoff_cap_ms",
            self.retry_backoff_cap_ms,
            self.retry_backoff_base_ms,
            600_000,
        )
        _check_range("saga.lease_ms", self.lease_ms, 100, 600_000)
        _check_range("saga.recovery_interval_ms", self.recovery_interval_ms, 10, 600_000)
        _check_range("saga.recovery_batch_max", self.recovery_batch_max, 1, 10_000)
        _check_range("saga.running_max", self.running_max, 1, 1_000_000)
        _check_range("saga.wait_ms", self.wait_ms, 0, 120_000)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    dsn: str
    """postgresql:// URL without a password; the password comes from password_file or the
    REGIONGATE_DATABASE_PASSWORD environment variable."""
    password_file: str | None = None
    pool_size_max: int = 8
    """Connections for reads and for the writes that move no money (accounts, statuses); the
    batch writers have their own (batch.writers)."""
    connect_timeout_ms: int = 5_000
    statement_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError(f"database.dsn must be a postgresql:// URL, got {self.dsn!r}")
        if re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", self.dsn):
            raise ConfigError("database.dsn must not carry a password; use password_file")
        _check_range("database.pool_size_max", self.pool_size_max, 1, 256)
        _check_range("database.connect_timeout_ms", self.connect_timeout_ms, 100, 120_000)
        _check_range("database.statement_timeout_ms", self.statement_timeout_ms, 100, 600_000)

    def password(self) -> str | None:
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return os.environ.get("REGIONGATE_DATABASE_PASSWORD")


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    region: str
    database: DatabaseConfig
    currencies: tuple[Currency, ...]
    peers: tuple[str, ...] = ()
    """Other regions; each gets a transit account per currency for cross-region money."""
    host: str = "127.0.0.1"
    port: int = 8101
    workers: int = 1
    """Processes serving the port (SO_REUSEPORT); each runs its own batcher."""
    metrics_port: int | None = None
    """Admin port for Prometheus (/metrics); worker i serves metrics_port + i."""
    service_keys_file: str | None = None
    """File of 'key_id: secret' lines; else REGIONGATE_SERVICE_KEYS='id:secret,...'."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    directory_file: str | None = None
    """The directory (YAML) that locates peer regions' ledger nodes, for cross-region transfers;
    or consul instead. With neither, this node refuses cross-region transfers."""
    consul: dict | None = None
    """Consul's directory (region_router.backends.build_directory)."""
    saga: SagaConfig = field(default_factory=SagaConfig)
    peer_key_ids: tuple[str, ...] = ()
    """Service key ids of other regions' ledgers. When set, saga steps are accepted only when
    signed with one of them (a gateway's key cannot credit an account out of a transit
    account), and this node signs its own saga steps with the first."""
    amount_max: int = AMOUNT_MAX_LIMIT
    body_size_max_bytes: int = 16 * 1024
    request_timeout_ms: int = 10_000
    pending_timeout_s_max: int = 7 * 24 * 3600
    expiry_interval_ms: int = 1_000
    expiry_batch_max: int = 500
    history_limit_max: int = 500
    signature_skew_s_max: int = 300
    """How far a signed request's timestamp may be from our clock, in seconds."""

    def __post_init__(self) -> None:
        if not isinstance(self.region, str) or not REGION_PATTERN.match(self.region):
            raise ConfigError(f"region must match {REGION_PATTERN.pattern}, got {self.region!r}")
        for peer in self.peers:
            if not isinstance(peer, str) or not REGION_PATTERN.match(peer) or peer == self.region:
                raise ConfigError(f"peers must be other region codes, got {peer!r}")
        if not self.currencies:
            raise ConfigError("currencies must list at least one currency")
        codes = [currency.code for currency in self.currencies]
        if len(set(codes)) != len(codes):
            raise ConfigError(f"currencies must not repeat a code, got {codes}")
        _check_range("port", self.port, 0, 65535)
        _check_range("workers", self.workers, 1, 64)
        if self.metrics_port is not None:
            _check_range("metrics_port", self.metrics_port, 1, 65535 - self.workers)
        _check_range("amount_max", self.amount_max, 1, AMOUNT_MAX_LIMIT)
        _check_range("body_size_max_bytes", self.body_size_max_bytes, 256, 1024 * 1024)
        _check_range("request_timeout_ms", self.request_timeout_ms, 100, 120_000)
        _check_range("pending_timeout_s_max", self.pending_timeout_s_max, 1, 365 * 24 * 3600)
        _check_range("expiry_interval_ms", self.expiry_interval_ms, 10, 3_600_000)
        _check_range("expiry_batch_max", self.expiry_batch_max, 1, 10_000)
        _check_range("history_limit_max", self.history_limit_max, 1, 10_000)
        _check_range("signature_skew_s_max", self.signature_skew_s_max, 1, 3600)

    def currency(self, code: str) -> Currency | None:
        for currency in self.currencies:
            if currency.code == code:
                return currency
        return None


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def ledger_config_from_dict(raw: dict[str, Any]) -> LedgerConfig:
    raw = dict(raw)
    if "database" not in raw or "currencies" not in raw or "region" not in raw:
        raise ConfigError("ledger config needs region, database and currencies")
    raw["database"] = _build(DatabaseConfig, raw["database"], "database")
    raw["currencies"] = tuple(
        _build(Currency, item, f"currencies[{index}]")
        for index, item in enumerate(raw["currencies"])
    )
    raw["peers"] = tuple(raw.get("peers", ()))
    raw["peer_key_ids"] = tuple(raw.get("peer_key_ids", ()))
    if "batch" in raw:
        raw["batch"] = _build(BatchConfig, raw["batch"], "batch")
    if "saga" in raw:
        raw["saga"] = _build(SagaConfig, raw["saga"], "saga")
    return _build(LedgerConfig, raw, "ledger")


def load_ledger_config(path: str | Path) -> LedgerConfig:
    """Read and validate a ledger node's YAML config file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read ledger config {path}: {exc}") from exc
    if isinstance(raw, dict) and "ledger" in raw:
        raw = raw["ledger"]
    return ledger_config_from_dict(raw)

"""The local cluster on one machine: per region an embedded PostgreSQL cluster and a ledger node
process, plus one Redis. It keeps its data under one directory between runs, generates the
development service key once (mode 0600, never committed), and stops cleanly on Ctrl-C.

The test suite uses the same pieces (``LedgerProcess`` for crash tests) so what is proved is
what a developer runs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.errors import ServiceStartError
from infra.services import PostgresCluster, RedisServer, free_port

DEFAULT_CURRENCIES = (
    {"code": "EUR", "exponent": 2},
    {"code": "USD", "exponent": 2},
    {"code": "GBP", "exponent": 2},
    {"code": "GCOIN", "exponent": 0},
)
LEDGER_READY_TIMEOUT_S = 30.0
LEDGER_STOP_TIMEOUT_S = 15.0
DEFAULT_LEDGER_PORTS = {"eu": 8101, "us": 8102, "ap": 8103}
KEY_ID = "local-1"


def ensure_service_keys(path: Path) -> str:
    """The development service keys file, made once with a fresh random secret."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                f"# development service keys; never commit\n{KEY_ID}: {secrets.token_hex(32)}\n"
            )
    return path.read_text()


def write_ledger_config(
    path: Path,
    *,
    region: str,
    dsn: str,
    port: int,
    service_keys_file: Path,
    peers: list[str] | None = None,
    extra: dict | None = None,
) -> Path:
    config = {
        "region": region,
        "peers": peers or [],
        "host": "127.0.0.1",
        "port": port,
        "service_keys_file": str(service_keys_file),
        "database": {"dsn": dsn},
        "currencies": list(DEFAULT_CURRENCIES),
    }
    config.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"ledger": config}, sort_keys=False))
    return path


def http_ready(url: str, timeout_s: float) -> bool:
    """Poll a readiness URL until it answers 200, bounded by timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


@dataclass
class LedgerProcess:
    """A ledger node in its own process (``regiongate ledger serve``)."""

    config_path: Path
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = LEDGER_READY_TIMEOUT_S) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "regiongate_cli",
                "ledger",
                "serve",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        if not http_ready(self.url + "/health/ready", timeout_s):
            self.kill()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise ServiceStartError(f"ledger node on port {self.port} did not get ready:\n{tail}")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=LEDGER_STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=LEDGER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=LEDGER_STOP_TIMEOUT_S)


@dataclass
class LocalCluster:
    """The main job: regions with their PostgreSQL and ledger node, and Redis."""

    root: Path
    regions: list[str]
    ledger_ports: dict[str, int] = field(default_factory=dict)
    postgres: dict[str, PostgresCluster] = field(default_factory=dict)
    ledgers: dict[str, LedgerProcess] = field(default_factory=dict)
    redis: RedisServer | None = None

    @property
    def service_keys_file(self) -> Path:
        return self.root / "secrets" / "service_keys"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_service_keys(self.service_keys_file)
        try:
            self.redis = RedisServer(self.root / "redis", free_port())
            self.redis.start()
            for region in self.regions:
                cluster = PostgresCluster(self.root / "postgres" / region, free_port())
                cluster.start()
                self.postgres[region] = cluster
                dsn = cluster.create_database(f"ledger_{region}")
                port = (
                    self.ledger_ports.get(region)
                    or DEFAULT_LEDGER_PORTS.get(region)
                    or (free_port())
                )
                config_path = write_ledger_config(
                    self.root / "config" / f"ledger-{region}.yaml",
                    region=region,
                    dsn=dsn,
                    port=port,
                    service_keys_file=self.service_keys_file,
                    peers=[peer for peer in self.regions if peer != region],
                )
                ledger = LedgerProcess(
                    config_path, port, self.root / "logs" / f"ledger-{region}.log"
                )
                ledger.start()
                self.ledgers[region] = ledger
            self._write_directory()
        except BaseException:
            self.stop()
            raise

    @property
    def directory_file(self) -> Path:
        return self.root / "config" / "directory.yaml"

    def _write_directory(self) -> None:
        """The directory records of this cluster, for the region router (YamlDirectory)."""
        from region_router.directory import LedgerEndpoint, Region, RegionStatus
        from region_router.yaml_directory import write_directory_file

        currencies = tuple(currency["code"] for currency in DEFAULT_CURRENCIES)
        write_directory_file(
            self.directory_file,
            [
                Region(
                    region,
                    RegionStatus.ACTIVE,
                    tuple(peer for peer in self.regions if peer != region),
                    currencies,
                )
                for region in self.regions
            ],
            [
                LedgerEndpoint(region, f"{region}-1", ledger.url)
                for region, ledger in self.ledgers.items()
            ],
            {},
        )

    def stop(self) -> None:
        for ledger in self.ledgers.values():
            ledger.stop()
        for cluster in self.postgres.values():
            cluster.stop()
        if self.redis is not None:
            self.redis.stop()

    def describe(self) -> dict:
        return {
            "data_dir": str(self.root),
            "redis": self.redis.url if self.redis else None,
            "service_keys_file": str(self.service_keys_file),
            "directory_file": str(self.directory_file),
            "regions": {
                region: {
                    "ledger": self.ledgers[region].url,
                    "config": str(self.ledgers[region].config_path),
                    "postgres": self.postgres[region].dsn(f"ledger_{region}"),
                    "log": str(self.ledgers[region].log_path),
                }
                for region in self.ledgers
            },
        }


def run_forever(cluster: LocalCluster) -> None:
    """Start the cluster, print where everything is, and wait for Ctrl-C or SIGTERM."""
    stop = False

    def on_signal(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    try:
        print(json.dumps(cluster.describe(), indent=2), flush=True)
        region = cluster.regions[0]
        print(
            "\nready. try:\n"
            f"  regiongate ledger call --config {cluster.ledgers[region].config_path} "
            f"GET /v1/accounts/{region}-house-EUR/balance\n"
            "Ctrl-C stops everything; data stays in the data dir for the next run.",
            flush=True,
        )
        while not stop:
            for region, ledger in cluster.ledgers.items():
                if ledger.process is not None and ledger.process.poll() is not None:
                    print(f"ledger node {region} exited; restarting", flush=True)
                    ledger.start()
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        cluster.stop()

"""The local cluster on one machine, the project's main job: per region an embedded PostgreSQL
cluster, a ledger node and an HTTPS gateway; one Redis; the YAML directory that routes between
them. Data stays under one directory between runs. Development secrets are made once there,
each mode 0600 and never committed: the service key, the TLS CA and server certificate, and the
key that signs development tokens. Ctrl-C stops everything.

The test suite uses the same pieces (``LedgerProcess`` in the crash tests) so what is proved is
what a developer runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.errors import ClusterAlreadyRunning, ClusterNotRunning, ServiceStartError
from infra.services import PostgresCluster, RedisServer, free_port
from infra.wan import WanProcess

DEFAULT_CURRENCIES = (
    {"code": "EUR", "exponent": 2},
    {"code": "USD", "exponent": 2},
    {"code": "GBP", "exponent": 2},
    {"code": "GCOIN", "exponent": 0},
)
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
DEFAULT_LEDGER_PORTS = {"eu": 8101, "us": 8102, "ap": 8103}
DEFAULT_GATEWAY_PORTS = {"eu": 8441, "us": 8442, "ap": 8443}
METRICS_PORT_OFFSET = 1000  # a service on port P serves Prometheus metrics on P + 1000
KEY_ID = "local-1"
PEER_KEY_ID = "local-peer-1"
STATE_FILE = "cluster.json"
LOCK_FILE = "cluster.lock"
"""Held (flock) by the process running the cluster, for its lifetime: a second ``./dev up`` on
the same data dir, and commands that need a running cluster, can tell without a port probe."""


def read_state(root: Path) -> dict:
    """The running local cluster's state (gateways, databases, keys), or ClusterNotRunning
    saying what to do."""
    root = Path(root)
    state_file = root / STATE_FILE
    if not state_file.exists() or not _lock_held(root / LOCK_FILE):
        raise ClusterNotRunning(
            f"no local cluster is running from {root}: start it with ./dev up (it keeps "
            "running in its own shell)"
        )
    return json.loads(state_file.read_text())


def _lock_held(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def metrics_url(port: int, worker: int = 0) -> str:
    """Where the service on port P serves Prometheus metrics: P + METRICS_PORT_OFFSET, plus the
    worker's index for a service run in several processes."""
    return f"http://127.0.0.1:{port + METRICS_PORT_OFFSET + worker}/metrics"


def ensure_service_keys(path: Path) -> str:
    """The development service keys file, made once with fresh random secrets: the key the
    gateways sign with (first) and the key ledgers sign saga steps with (PEER_KEY_ID; a data dir
    from before it existed gets it added)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                f"# development service keys; never commit\n{KEY_ID}: {secrets.token_hex(32)}\n"
            )
    if not any(line.startswith(f"{PEER_KEY_ID}:") for line in path.read_text().splitlines()):
        with open(path, "a") as handle:
            handle.write(f"{PEER_KEY_ID}: {secrets.token_hex(32)}\n")
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
    currencies: list[dict] | None = None,
) -> Path:
    config = {
        "region": region,
        "peers": peers or [],
        "host": "127.0.0.1",
        "port": port,
        "service_keys_file": str(service_keys_file),
        "database": {"dsn": dsn},
        "currencies": currencies or list(DEFAULT_CURRENCIES),
    }
    config.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"ledger": config}, sort_keys=False))
    return path


def http_ready(url: str, timeout_s: float, context: ssl.SSLContext | None = None) -> bool:
    """Poll a readiness URL until it answers 200, bounded by timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


@dataclass
class ServiceProcess:
    """A regiongate service in its own process, started and waited for until it is ready."""

    argv: list[str]
    ready_url: str
    log_path: Path
    ssl_context: ssl.SSLContext | None = None
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S, env: dict[str, str] | None = None) -> None:
        """Start and wait until ready; env adds to (never replaces) this process's environment."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        if not http_ready(self.ready_url, timeout_s, self.ssl_context):
            self.kill()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise ServiceStartError(f"{' '.join(self.argv[3:5])} did not get ready:\n{tail}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive():
            self.process.send_signal(signum)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


class LedgerProcess(ServiceProcess):
    """A ledger node in its own process (``regiongate ledger serve``)."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "regiongate_cli",
                "ledger",
                "serve",
                "--config",
                str(config_path),
            ],
            f"http://127.0.0.1:{port}/health/ready",
            log_path,
        )
        self.config_path = config_path
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    """The main job: regions with their PostgreSQL, ledger node and gateway; Redis."""

    root: Path
    regions: list[str]
    postgres: dict[str, PostgresCluster] = field(default_factory=dict)
    ledgers: dict[str, LedgerProcess] = field(default_factory=dict)
    gateways: dict[str, ServiceProcess] = field(default_factory=dict)
    gateway_urls: dict[str, str] = field(default_factory=dict)
    gateway_ports: dict[str, int] = field(default_factory=dict)
    redis: RedisServer | None = None
    wan_one_way_delay_ms: float | None = None
    """With a value, every link between two regions goes through a WAN proxy (infra.wan) that
    adds this one-way delay; None connects regions directly."""
    wan: WanProcess | None = None
    ledger_ports: dict[str, int] = field(default_factory=dict)
    fixed_ports: bool = True
    """The well-known ports (8101.., 8441..); False takes free ones (benchmarks, tests)."""
    gateway_extra: dict = field(default_factory=dict)
    """Settings merged into every gateway's config (a benchmark lifts the rate limits)."""
    ledger_extra: dict = field(default_factory=dict)
    _lock_handle: object = None
    topology: dict | None = None
    """Directory records from the Terraform topology module (infra.terraform): the regions,
    their statuses and currencies come from the same region map as the cloud's."""

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def service_keys_file(self) -> Path:
        return self.secrets_dir / "service_keys"

    def directory_file(self, region: str) -> Path:
        """Each region's view of the directory: the others' ledgers as reached from it (through
        its WAN links, when there are any), as each region's Consul datacenter would show."""
        return self.root / "config" / f"directory-{region}.yaml"

    def start(self) -> None:
        from infra.devkeys import ensure_dev_keys
        from infra.tls import ensure_dev_certificates
        from runtime.tls import client_context

        (self.root / "config").mkdir(parents=True, exist_ok=True)
        self._lock()
        ensure_service_keys(self.service_keys_file)
        tls = ensure_dev_certificates(self.secrets_dir / "tls")
        dev_keys = ensure_dev_keys(self.secrets_dir)
        try:
            self.redis = RedisServer(self.root / "redis", free_port())
            self.redis.start()
            self.ledger_ports = {
                region: (DEFAULT_LEDGER_PORTS.get(region) if self.fixed_ports else None)
                or free_port()
                for region in self.regions
            }
            self._start_wan()
            for region in self.regions:
                self._write_directory(region)
            for region in self.regions:
                self._start_ledger(region)
            for region in self.regions:
                self._start_gateway(region, tls, dev_keys, client_context(tls.ca_cert))
            self._write_state(tls.ca_cert, dev_keys)
        except BaseException:
            self.stop()
            raise

    def _start_ledger(self, region: str) -> None:
        cluster = PostgresCluster(self.root / "postgres" / region, free_port())
        cluster.start()
        self.postgres[region] = cluster
        dsn = cluster.create_database(f"ledger_{region}")
        port = self.ledger_ports[region]
        config_path = write_ledger_config(
            self.root / "config" / f"ledger-{region}.yaml",
            region=region,
            dsn=dsn,
            port=port,
            service_keys_file=self.service_keys_file,
            peers=[peer for peer in self.regions if peer != region],
            currencies=self._ledger_currencies(),
            extra={
                "metrics_port": port + METRICS_PORT_OFFSET,
                "directory_file": str(self.directory_file(region)),
                "peer_key_ids": [PEER_KEY_ID],
                **self.ledger_extra,
            },
        )
        ledger = LedgerProcess(config_path, port, self.root / "logs" / f"ledger-{region}.log")
        ledger.start()
        self.ledgers[region] = ledger

    def _start_gateway(self, region: str, tls, dev_keys, context: ssl.SSLContext) -> None:
        from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER

        port = (DEFAULT_GATEWAY_PORTS.get(region) if self.fixed_ports else None) or free_port()
        config_path = self.root / "config" / f"gateway-{region}.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "gateway": {
                        "region": region,
                        "host": "127.0.0.1",
                        "port": port,
                        "directory_file": str(self.directory_file(region)),
                        "jwks_file": str(dev_keys.jwks_file),
                        "audience": DEV_AUDIENCE,
                        "issuer": DEV_ISSUER,
                        "service_keys_file": str(self.service_keys_file),
                        "redis_url": self.redis.url,
                        "tls_cert_file": str(tls.cert),
                        "tls_key_file": str(tls.key),
                        "metrics_port": port + METRICS_PORT_OFFSET,
                        **self.gateway_extra,
                    }
                },
                sort_keys=False,
            )
        )
        url = f"https://127.0.0.1:{port}"
        gateway = ServiceProcess(
            [
                sys.executable,
                "-m",
                "regiongate_cli",
                "gateway",
                "serve",
                "--config",
                str(config_path),
            ],
            url + "/health/ready",
            self.root / "logs" / f"gateway-{region}.log",
            context,
        )
        gateway.start()
        self.gateways[region] = gateway
        self.gateway_urls[region] = url
        self.gateway_ports[region] = port

    def _ledger_currencies(self) -> list[dict]:
        """Every ledger knows every currency the directory names (a transit account per peer
        and currency), the defaults included."""
        if self.topology is None:
            return list(DEFAULT_CURRENCIES)
        from infra.terraform import currency_config

        codes = {c["code"] for c in DEFAULT_CURRENCIES}
        codes.update(code for r in self.topology["regions"] for code in r["currencies"])
        known = {c["code"]: c for c in DEFAULT_CURRENCIES}
        return [known.get(c["code"], c) for c in currency_config(codes)]

    def _start_wan(self) -> None:
        if self.wan_one_way_delay_ms is None:
            return
        self.wan = WanProcess(self.wan_one_way_delay_ms, self.root / "logs" / "wan.log")
        for region in self.regions:
            for peer in self.regions:
                if peer != region:
                    self.wan.add(f"{region}>{peer}", self.ledger_ports[peer])
        self.wan.start()

    def _ledger_url(self, source: str, region: str) -> str:
        if self.wan is not None and source != region:
            return self.wan.links[f"{source}>{region}"].url
        return f"http://127.0.0.1:{self.ledger_ports[region]}"

    def _write_directory(self, source: str) -> None:
        """One region's directory records, for its router (YamlDirectory)."""
        from region_router.directory import LedgerEndpoint, Region, RegionStatus
        from region_router.yaml_directory import write_directory_file

        currencies = tuple(currency["code"] for currency in DEFAULT_CURRENCIES)
        records = {r["code"]: r for r in (self.topology or {}).get("regions", [])}
        write_directory_file(
            self.directory_file(source),
            [
                Region(
                    region,
                    RegionStatus(records[region]["status"])
                    if region in records
                    else RegionStatus.ACTIVE,
                    tuple(peer for peer in self.regions if peer != region),
                    tuple(records[region]["currencies"]) if region in records else currencies,
                )
                for region in self.regions
            ],
            [
                LedgerEndpoint(region, f"{region}-1", self._ledger_url(source, region))
                for region in self.regions
            ],
            {},
            # A creation that names no region goes to the first one, through any gateway.
            default_region=self.regions[0],
        )

    def _write_state(self, ca_cert: Path, dev_keys) -> None:
        state = {
            "gateways": self.gateway_urls,
            "ledger_configs": {r: str(ledger.config_path) for r, ledger in self.ledgers.items()},
            "ledger_dsns": {r: c.dsn(f"ledger_{r}") for r, c in self.postgres.items()},
            "wan_one_way_delay_ms": self.wan_one_way_delay_ms,
            "ca_cert": str(ca_cert),
            "dev_private_key": str(dev_keys.private_key_file),
            "dev_jwks": str(dev_keys.jwks_file),
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _lock(self) -> None:
        handle = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise ClusterAlreadyRunning(
                f"a local cluster is already running from {self.root} (pid {pid}): use it, "
                "stop it with Ctrl-C in its shell, or start another with --data-dir DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def stop(self) -> None:
        for service in [*self.gateways.values(), *self.ledgers.values()]:
            service.stop()
        if self.wan is not None:
            self.wan.stop()
        for cluster in self.postgres.values():
            cluster.stop()
        if self.redis is not None:
            self.redis.stop()
        if self._lock_handle is not None:
            self._lock_handle.close()  # releases the lock
            self._lock_handle = None

    def describe(self) -> dict:
        return {
            "data_dir": str(self.root),
            "gateways": self.gateway_urls,
            "tls_ca": str(self.secrets_dir / "tls" / "dev-ca.pem"),
            "redis": self.redis.url if self.redis else None,
            "directory_files": [str(self.directory_file(region)) for region in self.regions],
            "wan_one_way_delay_ms": self.wan_one_way_delay_ms,
            "regions": {
                region: {
                    "gateway": self.gateway_urls.get(region),
                    "ledger": self.ledgers[region].url,
                    "metrics": [
                        metrics_url(port)
                        for port in (self.ledgers[region].port, self.gateway_ports.get(region))
                        if port
                    ],
                    "postgres": self.postgres[region].dsn(f"ledger_{region}"),
                    "logs": str(self.root / "logs"),
                }
                for region in self.ledgers
            },
        }


def cli_command() -> str:
    """The regiongate command as this process was started (``.venv/bin/regiongate`` under
    ``./dev up``), so the hints it prints work when pasted as they are."""
    invoked = sys.argv[0]
    if Path(invoked).name != "regiongate":
        return "regiongate"
    relative = os.path.relpath(invoked)
    return relative if not relative.startswith("..") else invoked


def run_forever(cluster: LocalCluster) -> None:
    """Start the cluster, print where everything is and a development token, and wait for
    Ctrl-C or SIGTERM, restarting a service process that dies."""
    from infra.devkeys import ensure_dev_keys

    stop = False

    def on_signal(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    try:
        token = ensure_dev_keys(cluster.secrets_dir).mint("dev-admin", "admin", lifetime_s=86400)
        first = cluster.regions[0]
        print(json.dumps(cluster.describe(), indent=2), flush=True)
        print(
            f"\ndevelopment admin token (24 h):\n{token}\n\nready. try:\n"
            f"  curl --cacert {cluster.secrets_dir}/tls/dev-ca.pem -H 'Authorization: Bearer "
            f"<token>' {cluster.gateway_urls[first]}/v1/accounts/{first}-house-EUR/balance\n"
            f"  {cli_command()} local demo      (a scripted scenario across the regions)\n"
            "Ctrl-C stops everything; data stays in the data dir for the next run.",
            flush=True,
        )
        while not stop:
            for name, service in [*cluster.ledgers.items(), *cluster.gateways.items()]:
                if not service.alive() and not stop:
                    print(f"{name} service exited; restarting", flush=True)
                    service.start()
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        cluster.stop()

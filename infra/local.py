"""The local cluster on one machine, the project's main job: per region an embedded PostgreSQL
cluster, a ledger node and an HTTPS gateway; one Redis; the YAML directory that routes between
them. Data stays under one directory between runs. Development secrets are made once there,
each mode 0600 and never committed: the service key, the TLS CA and server certificate, and the
key that signs development tokens. Ctrl-C stops everything.

Its processes are infra.processes', which the tests use too.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.errors import ClusterAlreadyRunning, ClusterNotRunning, ServiceStartError
from infra.processes import (
    DEFAULT_CURRENCIES,
    IMAGE,
    IMAGE_UID,
    METRICS_PORT_OFFSET,
    PEER_KEY_ID,
    LedgerProcess,
    ServiceProcess,
    cli_argv,
    ensure_service_keys,
    metrics_url,
    write_ledger_config,
)
from infra.prometheus_server import PrometheusServer, Target
from infra.services import PostgresCluster, RedisServer, free_port
from infra.wan import WanProcess
from region_router.directory import SlotRange
from wire.ids import IDENTITY_SLOTS

DEFAULT_LEDGER_PORTS = {"eu": 8101, "us": 8102, "ap": 8103}
DEFAULT_GATEWAY_PORTS = {"eu": 8441, "us": 8442, "ap": 8443}
DEFAULT_PROMETHEUS_PORT = 9490
CONTAINERS_CONF = Path(__file__).resolve().parent / "containers" / "containers.conf"
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
    events_redis: RedisServer | None = None
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
    images: bool = False
    """Run the ledger nodes and gateways from the container image (./dev image) rather than
    from this checkout; PostgreSQL, Redis and the WAN proxy stay host processes."""
    observe_interval_s: float | None = None
    """With a value, a Prometheus server scrapes every service at this interval and evaluates
    the project's rules (infra.prometheus_server); None runs none."""
    prometheus: PrometheusServer | None = None

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
        if self.images:
            self._share_with_image()
        try:
            self.redis = RedisServer(self.root / "redis", free_port())
            self.redis.start()
            self.events_redis = RedisServer(self.root / "redis-events", free_port(), durable=True)
            self.events_redis.start()
            self.ledger_ports = {
                region: (DEFAULT_LEDGER_PORTS.get(region) if self.fixed_ports else None)
                or free_port(also_free_at=(METRICS_PORT_OFFSET,))
                for region in self.regions
            }
            self._start_wan()
            for region in self.regions:
                self._write_directory(region)
            for region in self.regions:
                self._start_ledger(region)
            for region in self.regions:
                self._start_gateway(region, tls, dev_keys, client_context(tls.ca_cert))
            self._start_prometheus()
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
                "events": {
                    "redis_url": self.events_redis.url,
                    **self.ledger_extra.get("events", {}),
                },
            },
        )
        ledger = LedgerProcess(
            config_path,
            port,
            self.root / "logs" / f"ledger-{region}.log",
            image_root=self.root if self.images else None,
        )
        ledger.start()
        self.ledgers[region] = ledger

    def _start_gateway(self, region: str, tls, dev_keys, context: ssl.SSLContext) -> None:
        from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER

        port = (DEFAULT_GATEWAY_PORTS.get(region) if self.fixed_ports else None) or free_port(
            also_free_at=(METRICS_PORT_OFFSET,)
        )
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
            cli_argv(
                "gateway",
                "serve",
                "--config",
                str(config_path),
                image_root=self.root if self.images else None,
                name=f"regiongate-gateway-{port}",
            ),
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
            slot_ranges=even_slot_ranges(self.regions),
        )

    def _write_state(self, ca_cert: Path, dev_keys) -> None:
        state = {
            "gateways": self.gateway_urls,
            "ledger_configs": {r: str(ledger.config_path) for r, ledger in self.ledgers.items()},
            "ledger_dsns": {r: c.dsn(f"ledger_{r}") for r, c in self.postgres.items()},
            "directory_files": [str(self.directory_file(region)) for region in self.regions],
            "events_redis": self.events_redis.url,
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

    def _share_with_image(self) -> None:
        """The image runs as an unprivileged user: the secrets it reads (mode 0600) become its,
        and podman reads the project's containers.conf."""
        os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
        exists = subprocess.run(["podman", "image", "exists", IMAGE], check=False)
        if exists.returncode != 0:
            raise ServiceStartError(f"no image {IMAGE}: build it with ./dev image")
        self.root.chmod(0o755)
        for path in [self.secrets_dir, *self.secrets_dir.rglob("*")]:
            os.chown(path, IMAGE_UID, IMAGE_UID)

    def _start_prometheus(self) -> None:
        if self.observe_interval_s is None:
            return
        port = (DEFAULT_PROMETHEUS_PORT if self.fixed_ports else None) or free_port()
        targets = [
            *(
                Target("regiongate-ledger", region, f"127.0.0.1:{p + METRICS_PORT_OFFSET}")
                for region, p in self.ledger_ports.items()
            ),
            *(
                Target("regiongate-gateway", region, f"127.0.0.1:{p + METRICS_PORT_OFFSET}")
                for region, p in self.gateway_ports.items()
            ),
        ]
        self.prometheus = PrometheusServer(
            self.root / "prometheus",
            port,
            targets,
            scrape_interval_s=self.observe_interval_s,
            evaluation_interval_s=self.observe_interval_s,
        )
        self.prometheus.start()

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for service in [*self.gateways.values(), *self.ledgers.values()]:
            service.stop()
        if self.wan is not None:
            self.wan.stop()
        for cluster in self.postgres.values():
            cluster.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.events_redis is not None:
            self.events_redis.stop()
        if self._lock_handle is not None:
            self._lock_handle.close()  # releases the lock
            self._lock_handle = None

    def describe(self) -> dict:
        return {
            "data_dir": str(self.root),
            "gateways": self.gateway_urls,
            "tls_ca": str(self.secrets_dir / "tls" / "dev-ca.pem"),
            "redis": self.redis.url if self.redis else None,
            "events_redis": self.events_redis.url if self.events_redis else None,
            "directory_files": [str(self.directory_file(region)) for region in self.regions],
            "wan_one_way_delay_ms": self.wan_one_way_delay_ms,
            "prometheus": self.prometheus.url if self.prometheus is not None else None,
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


def even_slot_ranges(regions: list[str]) -> tuple[SlotRange, ...]:
    """The identity slots cut into one contiguous range per region, in the regions' order."""
    bounds = [round(i * IDENTITY_SLOTS / len(regions)) for i in range(len(regions) + 1)]
    return tuple(
        SlotRange(bounds[i], bounds[i + 1] - 1, region) for i, region in enumerate(regions)
    )


def even_slot_owners(regions: list[str]) -> tuple[str, ...]:
    """The region owning each identity slot under even_slot_ranges (as a directory's
    snapshot holds them: slot_owners)."""
    return tuple(
        span.region for span in even_slot_ranges(regions) for _ in range(span.first, span.last + 1)
    )


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
        if cluster.prometheus is not None:
            print(
                f"Prometheus scrapes every service: {cluster.prometheus.url} "
                f"(alerts: {cluster.prometheus.url}/alerts)",
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

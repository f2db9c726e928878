"""Embedded PostgreSQL clusters and Redis servers that regiongate starts and stops itself.

One launcher serves the test session (fixtures) and the local cluster (the main job), so what
the tests prove runs on exactly what a developer runs. Each service gets a private data dir and a
free loopback port. PostgreSQL refuses to run as root, so when we are root the server runs as an
unprivileged user (``postgres`` on Debian) and its data dir is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.errors import ServiceStartError

POSTGRES_START_TIMEOUT_S = 60.0
REDIS_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0

# The server settings the ledger relies on. Durability is never traded for speed here: fsync and
# synchronous_commit stay on, and the benchmark's pgbench baseline runs with the same settings.
LEDGER_POSTGRES_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    # Times each WAL flush (pg_stat_wal.wal_sync_time): a commit's largest cost under load, which
    # the benchmarks print (loadtests.walstats). Two clock reads per flush.
    "track_wal_io_timing": "on",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "wal_buffers": "16MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    # Lets a batch's commit share one WAL flush with commits that arrive within the window.
    "commit_delay": "0",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "timezone": "'UTC'",
}


# Ports for our own servers come from below the kernel's ephemeral range. A port the kernel picks
# for a bind to 0 lies inside that range, so between free_port() and the server's own bind, any
# outgoing connection (a pool's, a health check's) could take it as its source port: bench_saga
# once failed so, with EADDRINUSE on a port handed out a moment before.
PORTS_FLOOR = 10_000
PORT_TRIES_MAX = 500
_ports_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    """The lowest ephemeral port, the ceiling of our draw. Where it cannot be read, Linux's
    default; where it leaves under a thousand ports above PORTS_FLOOR, that default too: no
    range is safe from source ports then, and a wide one at least keeps draws apart."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768
    return low if low > PORTS_FLOOR + 1_000 else 32_768


def terminate(process: subprocess.Popen | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL past timeout_s: a process that will not stop is stopped."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def free_port(also_free_at: tuple[int, ...] = ()) -> int:
    """A loopback TCP port that was free a moment ago, below the ephemeral range (see above)
    and not handed out before by this process, drawn at random so that concurrent processes
    (a test session and a benchmark) seldom draw the same one. With also_free_at, the ports at
    those offsets from it are held to the same rules (a service's metrics port, port + 1000:
    drawn alone, that one could land among the kernel's source ports)."""
    ceiling = _ephemeral_floor() - max(also_free_at, default=0)
    rng = random.SystemRandom()
    for _ in range(PORT_TRIES_MAX):
        port = rng.randrange(PORTS_FLOOR, ceiling)
        wanted = [port, *(port + offset for offset in also_free_at)]
        if any(p in _ports_handed_out or not _bindable(p) for p in wanted):
            continue
        _ports_handed_out.update(wanted)
        return port
    raise ServiceStartError(
        f"no free loopback port in [{PORTS_FLOOR}, {ceiling}) after {PORT_TRIES_MAX} tries"
    )


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Poll until something accepts TCP connections on (host, port), bounded by timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def postgres_bin_dir() -> Path:
    """Find the PostgreSQL server binaries (Debian keeps them out of PATH)."""
    override = os.environ.get("REGIONGATE_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServiceStartError(
        "PostgreSQL server binaries not found; install them with "
        "'apt-get install -y postgresql' or set REGIONGATE_PG_BIN"
    )


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run servers as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("REGIONGATE_SERVICE_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise ServiceStartError(
            f"running as root, and user {name!r} does not exist to run PostgreSQL as; "
            "install the 'postgresql' package or set REGIONGATE_SERVICE_USER"
        ) from exc


def _hand_over(path: Path, user: pwd.struct_passwd | None) -> None:
    """Make path (a dir we created) owned by the service user, and its parents traversable."""
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _run(argv: list[str], user: pwd.struct_passwd | None, **kwargs) -> subprocess.CompletedProcess:
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, **kwargs)


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in data_dir, on 127.0.0.1:port, that we initialise, start and stop."""

    data_dir: Path
    port: int
    user: str = "regiongate"
    settings: dict[str, str] | None = None
    server_path: str | None = None
    """The server executable pg_ctl starts, where not the installed one: a wrapper that runs it
    under a profiler (loadtests.bench_instructions runs it under callgrind)."""

    @property
    def dsn_base(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}"

    def dsn(self, database: str = "postgres") -> str:
        return f"{self.dsn_base}/{database}"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb, once: a second call on an initialised dir keeps its data."""
        if self.initialised():
            return
        service_user = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        _hand_over(self.data_dir, service_user)
        bin_dir = postgres_bin_dir()
        result = _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            service_user,
        )
        if result.returncode != 0:
            raise ServiceStartError(f"initdb failed in {self.data_dir}: {result.stderr.strip()}")
        self._write_settings()

    def _write_settings(self) -> None:
        settings = dict(LEDGER_POSTGRES_SETTINGS)
        settings.update(self.settings or {})
        lines = [f"{key} = {value}" for key, value in settings.items()]
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text("# written by regiongate infra.services\n" + "\n".join(lines) + "\n")
        service_user = _service_user()
        if service_user is not None:
            os.chown(conf, service_user.pw_uid, service_user.pw_gid)

    def start(self) -> None:
        if not self.initialised():
            self.init()
        service_user = _service_user()
        bin_dir = postgres_bin_dir()
        log_file = self.data_dir / "server.log"
        result = _run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log_file),
                "-o",
                f"-p {self.port}",
                *(["-p", self.server_path] if self.server_path else []),
                "-w",
                "-t",
                str(int(POSTGRES_START_TIMEOUT_S)),
                "start",
            ],
            service_user,
        )
        if result.returncode != 0 or not wait_for_port("127.0.0.1", self.port, 5.0):
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise ServiceStartError(
                f"PostgreSQL did not start on port {self.port}: {result.stderr.strip()}\n{tail}"
            )

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while the cluster runs, from the first line of postmaster.pid
        (the benchmarks read the CPU time of its process tree)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        _run(
            [
                str(postgres_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(STOP_TIMEOUT_S)),
                "stop",
            ],
            _service_user(),
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def _client(self, tool: str) -> list[str]:
        """A client tool of this cluster's PostgreSQL, pointed at it as its superuser."""
        binary = str(postgres_bin_dir() / tool)
        return [binary, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]

    def create_database(self, name: str) -> str:
        """Create database name if it does not exist; return its DSN."""
        result = _run(
            [
                *self._client("psql"),
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
            ],
            None,
        )
        if result.stdout.strip() != "1":
            created = _run(
                [*self._client("createdb"), name],
                None,
            )
            if created.returncode != 0:
                raise ServiceStartError(f"createdb {name} failed: {created.stderr.strip()}")
        return self.dsn(name)


@dataclass
class RedisServer:
    """A Redis server on 127.0.0.1:port with its files in data_dir. A durable one (the event
    streams') appends every write to its log and fsyncs it before answering, so a kill -9
    loses nothing it acknowledged; the rate limiter's keeps nothing on disk."""

    data_dir: Path
    port: int
    process: subprocess.Popen | None = None
    durable: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceStartError(
                "redis-server not found; install it with 'apt-get install -y redis-server'"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                *(
                    ["--appendonly", "yes", "--appendfsync", "always"]
                    if self.durable
                    else ["--appendonly", "no"]
                ),
                "--protected-mode",
                "yes",
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port("127.0.0.1", self.port, REDIS_START_TIMEOUT_S):
            self.stop()
            raise ServiceStartError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        terminate(self.process)

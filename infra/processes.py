"""The service processes of the local cluster and of the tests that kill them: a ledger node or a
gateway in a process of its own, started until ready, stopped or killed; its config file, the
development service keys, and where it serves metrics. The test suite uses the same pieces
(``LedgerProcess`` in the crash tests), so what is proved is what a developer runs."""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.errors import ServiceStartError
from infra.services import terminate

DEFAULT_CURRENCIES = (
    {"code": "EUR", "exponent": 2},
    {"code": "USD", "exponent": 2},
    {"code": "GBP", "exponent": 2},
    {"code": "GCOIN", "exponent": 0},
)
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
METRICS_PORT_OFFSET = 1000  # a service on port P serves Prometheus metrics on P + 1000
KEY_ID = "local-1"
PEER_KEY_ID = "local-peer-1"


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
            raise ServiceStartError(f"{' '.join(self.argv[-4:-2])} did not get ready:\n{tail}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.alive():
            self.process.send_signal(signum)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        terminate(self.process, STOP_TIMEOUT_S)


IMAGE = "localhost/regiongate:dev"
"""What ./dev image builds, and what ``./dev up --images`` runs."""
IMAGE_UID = 10001
"""The image's unprivileged user: what it reads must be readable by it."""


def cli_argv(*args: str, image_root: Path | None = None, name: str = "") -> list[str]:
    """``regiongate ARGS`` as this interpreter runs it; or, with image_root, in the image
    (podman, the host's network, image_root mounted read-only at its own path so that the
    paths in configs hold), as a container of that name."""
    if image_root is None:
        return [sys.executable, "-m", "regiongate_cli", *args]
    return [
        "podman", "run", "--rm", "--replace", "--name", name, "--network", "host",
        f"--volume={image_root}:{image_root}:ro", IMAGE, *args,
    ]  # fmt: skip


class LedgerProcess(ServiceProcess):
    """A ledger node in its own process (``regiongate ledger serve``), or in the image."""

    def __init__(
        self, config_path: Path, port: int, log_path: Path, image_root: Path | None = None
    ) -> None:
        super().__init__(
            cli_argv(
                "ledger",
                "serve",
                "--config",
                str(config_path),
                image_root=image_root,
                name=f"regiongate-ledger-{port}",
            ),
            f"http://127.0.0.1:{port}/health/ready",
            log_path,
        )
        self.config_path = config_path
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

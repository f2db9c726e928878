"""The container image runs: ``./dev image`` builds it (a debootstrap base, the project's
Containerfile, podman with the project's containers.conf), then one region's ledger node and
gateway run from it, as the non-root user, against the test session's PostgreSQL and Redis; an
account is created, funded and read back through the gateway over HTTPS; and ``podman stop``
(SIGTERM, the image's STOPSIGNAL) ends each service cleanly, with exit status 0.

Skipped with the reason where podman is not installed; ./dev test installs it, so CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_keys
from infra.processes import ensure_service_keys, write_ledger_config
from infra.services import free_port
from infra.tls import ensure_dev_certificates
from region_router.directory import LedgerEndpoint, Region, RegionStatus
from region_router.yaml_directory import write_directory_file
from runtime.tls import client_context
from tests.support import unique

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/regiongate:dev"
IMAGE_UID = 10001
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "infra" / "containers" / "containers.conf")}


def _podman(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *argv], capture_output=True, text=True, timeout=timeout_s, env=ENV, check=False
    )


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is not installed: ./dev test installs it")
        pytest.skip("podman is not installed (./dev test installs it, with buildah and runc)")
    built = subprocess.run(
        ["bash", str(ROOT / "dev"), "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert IMAGE in built.stdout, built.stdout
    return IMAGE


def _owned(path: Path) -> Path:
    """The image runs as an unprivileged user: it must be able to read what is mounted."""
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def _run(name: str, mounts: Path, *argv: str) -> None:
    started = _podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--volume", f"{mounts}:/etc/regiongate:ro", IMAGE, *argv,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr


@pytest.mark.timeout(1200)
def test_a_region_runs_from_the_image(image, postgres, redis_server, tmp_path):
    mounts = tmp_path / "etc"
    mounts.mkdir()
    mounts.chmod(0o755)
    ledger_port, gateway_port = free_port(), free_port()
    dsn = postgres.create_database(unique("img").replace("-", "_")[:40])
    ensure_service_keys(mounts / "service_keys")
    _owned(mounts / "service_keys")
    write_ledger_config(
        mounts / "ledger.yaml",
        region="eu",
        dsn=dsn,
        port=ledger_port,
        service_keys_file=Path("/etc/regiongate/service_keys"),
    )
    write_directory_file(
        mounts / "directory.yaml",
        [Region("eu", RegionStatus.ACTIVE, ())],
        [LedgerEndpoint("eu", "eu-1", f"http://127.0.0.1:{ledger_port}")],
        {},
        default_region="eu",
    )
    tls = ensure_dev_certificates(tmp_path / "tls")
    keys = ensure_dev_keys(tmp_path / "keys")
    for source, target in ((tls.cert, "server.pem"), (tls.key, "server.key")):
        shutil.copy(source, mounts / target)
        _owned(mounts / target)
    shutil.copy(keys.jwks_file, mounts / "jwks.json")
    (mounts / "gateway.yaml").write_text(
        yaml.safe_dump(
            {
                "gateway": {
                    "region": "eu",
                    "port": gateway_port,
                    "directory_file": "/etc/regiongate/directory.yaml",
                    "jwks_file": "/etc/regiongate/jwks.json",
                    "audience": DEV_AUDIENCE,
                    "issuer": DEV_ISSUER,
                    "service_keys_file": "/etc/regiongate/service_keys",
                    "redis_url": redis_server.url,
                    "tls_cert_file": "/etc/regiongate/server.pem",
                    "tls_key_file": "/etc/regiongate/server.key",
                }
            }
        )
    )
    for path in mounts.iterdir():
        if path.name not in ("service_keys", "server.key"):
            path.chmod(0o644)
    ledger, gateway = unique("rg-ledger"), unique("rg-gateway")
    try:
        _run(ledger, mounts, "ledger", "serve", "--config", "/etc/regiongate/ledger.yaml")
        _run(gateway, mounts, "gateway", "serve", "--config", "/etc/regiongate/gateway.yaml")
        context = client_context(tls.ca_cert)
        base = f"https://127.0.0.1:{gateway_port}"
        _wait_ready(f"http://127.0.0.1:{ledger_port}/health/ready", None, ledger)
        _wait_ready(f"{base}/health/ready", context, gateway)
        admin = keys.mint("image-test", "admin")
        status, account = _call(context, admin, "POST", f"{base}/v1/accounts", {"currency": "EUR"})
        assert status == 201, account
        deposit = {
            "debit_account_id": "eu-clearing-EUR",
            "credit_account_id": account["id"],
            "amount": 250,
            "currency": "EUR",
        }
        status, transfer = _call(context, admin, "POST", f"{base}/v1/transfers", deposit)
        assert status == 201, transfer
        path = f"{base}/v1/accounts/{account['id']}/balance"
        status, balance = _call(context, admin, "GET", path)
        assert status == 200 and balance["posted"] == 250, balance
        user = _podman("exec", ledger, "id", "-u").stdout.strip()
        assert user == str(IMAGE_UID)
        for name in (gateway, ledger):
            assert _podman("stop", "--time", "20", name).returncode == 0
            exit_code = _podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout
            assert exit_code.strip() == "0", (name, _podman("logs", name).stderr[-2000:])
    finally:
        for name in (gateway, ledger):
            _podman("rm", "--force", name)


def _wait_ready(url: str, context: ssl.SSLContext | None, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    logs = _podman("logs", name)
    pytest.fail(f"{name} did not get ready: {logs.stdout[-1500:]}{logs.stderr[-1500:]}")


def _call(context, token: str, method: str, url: str, body: dict | None = None):
    request = urllib.request.Request(  # noqa: S310 (the test's own https URL)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": unique("img"),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")

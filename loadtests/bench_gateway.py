"""Gateway benchmark: ``python -m loadtests.bench_gateway [--seconds N] [--clients C]``.

One run, one machine, the same call (an account's balance) at the same concurrency, measured:

  direct   straight to the eu ledger node (a signed service call, plain HTTP on loopback);
  gateway  through the eu gateway over HTTPS with a bearer token (a local account: no extra hop);
  remote   through the us gateway over HTTPS, for the same eu account (one extra hop, no WAN
           delay here: the saga benchmark adds that);
  nginx    when nginx is installed: nginx terminating TLS with the same certificate and
           proxying with keep-alive to the same ledger node; the reference for what a proxy
           costs on this machine.

The last line is one JSON object: ``direct_rps``, ``gateway_rps``, ``nginx_rps``,
``rps_ratio_vs_nginx``, ``added_p50_ms`` and ``added_p99_ms`` (gateway minus direct),
``remote_added_p50_ms``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
import yaml

from infra.devkeys import DEV_AUDIENCE, DEV_ISSUER, ensure_dev_keys
from infra.processes import (
    LedgerProcess,
    ServiceProcess,
    ensure_service_keys,
    write_ledger_config,
)
from infra.services import PostgresCluster, RedisServer, free_port, wait_for_port
from infra.tls import ensure_dev_certificates
from loadtests.httpload import LoadResult, bearer_get, check_load_arguments, run_load, signed_get
from region_router.directory import LedgerEndpoint, Region, RegionStatus
from region_router.yaml_directory import write_directory_file
from runtime.tls import client_context
from wire.service_auth import ServiceKeyring

NGINX_CONFIG = """
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream ledger {{ server 127.0.0.1:{ledger_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://ledger;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def summary(result: LoadResult) -> dict:
    return {
        "rps": round(result.rps, 1),
        "p50_ms": round(result.percentile_ms(0.5), 2),
        "p99_ms": round(result.percentile_ms(0.99), 2),
        "statuses": result.statuses,
    }


def start_gateway(
    root: Path,
    region: str,
    directory: Path,
    keys,
    tls,
    redis_url: str,
    service_keys: Path,
    workers: int = 1,
) -> tuple[ServiceProcess, int]:
    port = free_port()
    config = root / f"gateway-{region}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway": {
                    "region": region,
                    "port": port,
                    "workers": workers,
                    "directory_file": str(directory),
                    "jwks_file": str(keys.jwks_file),
                    "audience": DEV_AUDIENCE,
                    "issuer": DEV_ISSUER,
                    "service_keys_file": str(service_keys),
                    "redis_url": redis_url,
                    "tls_cert_file": str(tls.cert),
                    "tls_key_file": str(tls.key),
                    # The benchmark measures forwarding, not the limiter's refusals.
                    "rate_limit": {
                        "per_client_rate_per_s": 1_000_000,
                        "per_client_burst": 10_000_000,
                        "per_account_rate_per_s": 1_000_000,
                        "per_account_burst": 10_000_000,
                    },
                }
            }
        )
    )
    process = ServiceProcess(
        [sys.executable, "-m", "regiongate_cli", "gateway", "serve", "--config", str(config)],
        f"https://127.0.0.1:{port}/health/ready",
        root / f"gateway-{region}.log",
        client_context(tls.ca_cert),
    )
    process.start()
    return process, port


def start_nginx(
    root: Path, ledger_port: int, tls, workers: int = 1
) -> tuple[subprocess.Popen | None, int]:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None, 0
    port = free_port()
    config = root / "nginx.conf"
    config.write_text(
        NGINX_CONFIG.format(
            workers=workers,
            root=root,
            ledger_port=ledger_port,
            port=port,
            cert=tls.cert,
            key=tls.key,
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for_port("127.0.0.1", port, 10):
        process.kill()
        return None, 0
    return process, port


async def measure(args, ledger_port, gateway_ports, nginx_port, key, token, account, tls):
    path = f"/v1/accounts/{account}/balance"
    context = client_context(tls.ca_cert)
    common = {
        "host": "127.0.0.1",
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": min(2.0, max(0.5, args.seconds / 5)),
    }
    results = {}
    results["direct"] = await run_load(
        port=ledger_port,
        make_request=lambda n: signed_get(path, key),
        **common,
    )
    request = bearer_get(path, token)
    results["gateway"] = await run_load(
        port=gateway_ports["eu"], make_request=lambda n: request, ssl_context=context, **common
    )
    request_remote = bearer_get(path, token)
    results["remote"] = await run_load(
        port=gateway_ports["us"],
        make_request=lambda n: request_remote,
        ssl_context=context,
        **common,
    )
    if nginx_port:
        results["nginx"] = await run_load(
            port=nginx_port,
            make_request=lambda n: signed_get(path, key),
            ssl_context=context,
            **common,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    # Long: a benchmark script, setup to report, read in order.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes per gateway, and nginx's worker_processes: the same for both",
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be in [1, 64]")
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-gw-"))
    cluster = PostgresCluster(root / "pg", free_port())
    redis = RedisServer(root / "redis", free_port())
    services: list = []
    nginx = None
    try:
        cluster.start()
        redis.start()
        service_keys = root / "service_keys"
        ensure_service_keys(service_keys)
        tls = ensure_dev_certificates(root / "tls")
        keys = ensure_dev_keys(root / "keys")
        ledgers = {}
        for region in ("eu", "us"):
            port = free_port()
            config = write_ledger_config(
                root / f"ledger-{region}.yaml",
                region=region,
                dsn=cluster.create_database(f"ledger_{region}"),
                port=port,
                service_keys_file=service_keys,
                peers=["us" if region == "eu" else "eu"],
            )
            ledger = LedgerProcess(config, port, root / f"ledger-{region}.log")
            ledger.start()
            services.append(ledger)
            ledgers[region] = ledger
        directory = root / "directory.yaml"
        write_directory_file(
            directory,
            [
                Region("eu", RegionStatus.ACTIVE, ("us",)),
                Region("us", RegionStatus.ACTIVE, ("eu",)),
            ],
            [LedgerEndpoint(r, f"{r}-1", ledger.url) for r, ledger in ledgers.items()],
            {},
        )
        gateway_ports = {}
        for region in ("eu", "us"):
            process, port = start_gateway(
                root, region, directory, keys, tls, redis.url, service_keys, args.workers
            )
            services.append(process)
            gateway_ports[region] = port
        nginx, nginx_port = start_nginx(root, ledgers["eu"].port, tls, args.workers)
        account = "eu-house-EUR"
        token = keys.mint("bench", "admin")
        key = ServiceKeyring.load(str(service_keys)).signing_key
        print(
            f"balance reads, {args.clients} clients, {args.seconds}s each: direct, gateway, "
            f"remote gateway{', nginx' if nginx_port else ' (nginx not installed)'} ...",
            flush=True,
        )
        started = time.perf_counter()
        results = uvloop.run(
            measure(args, ledgers["eu"].port, gateway_ports, nginx_port, key, token, account, tls)
        )
        for name, result in results.items():
            print(f"    {name:8} {summary(result)}", flush=True)
        print(f"    ({time.perf_counter() - started:.1f}s)", flush=True)
        direct, gateway, remote = results["direct"], results["gateway"], results["remote"]
        nginx_result = results.get("nginx")
        figures = {
            "clients": args.clients,
            "workers": args.workers,
            "seconds": args.seconds,
            "direct_rps": round(direct.rps, 1),
            "gateway_rps": round(gateway.rps, 1),
            "remote_gateway_rps": round(remote.rps, 1),
            "nginx_rps": round(nginx_result.rps, 1) if nginx_result else None,
            "rps_ratio_vs_nginx": (
                round(gateway.rps / nginx_result.rps, 3)
                if nginx_result and nginx_result.rps
                else None
            ),
            "direct_p50_ms": round(direct.percentile_ms(0.5), 3),
            "gateway_p50_ms": round(gateway.percentile_ms(0.5), 3),
            "added_p50_ms": round(gateway.percentile_ms(0.5) - direct.percentile_ms(0.5), 3),
            "added_p99_ms": round(gateway.percentile_ms(0.99) - direct.percentile_ms(0.99), 3),
            "remote_added_p50_ms": round(remote.percentile_ms(0.5) - direct.percentile_ms(0.5), 3),
            "non_2xx": sum(n for r in results.values() for s, n in r.statuses.items() if s >= 300),
        }
        print(json.dumps(figures))
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        for service in reversed(services):
            service.stop()
        redis.stop()
        cluster.stop("immediate")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

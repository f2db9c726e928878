"""Saga benchmark: ``python -m loadtests.bench_saga [--seconds N] [--one-way-delay-ms D]
[--clients C] [--rounds R]``.

Two regions (eu, us) of the local cluster, each with its PostgreSQL, ledger node and HTTPS
gateway, with every link between them through the WAN proxy (infra.wan) at a one-way delay of
D ms (default 40, so an 80 ms round trip). Closed-loop clients post transfers to the eu gateway
with bearer tokens and idempotency keys, as game clients would:

  cross  eu player -> us player: a saga (hold in eu, credit in us over the WAN, post in eu);
  intra  eu player -> eu player, for comparison.

The round trip is measured, not assumed: a health call through the same WAN link. One WAN round
trip is the floor for a cross-region transfer, so ``rtt_multiple_p50`` (cross p50 over that
round trip) says how close the saga gets to it. After the load the cross-region audit runs.

On this shared machine one run's multiple moved between 1.19 and 1.35 within an hour, on the
same code, so the runs come in R rounds (default 3) of cross, then intra, and the summary is the
median of the rounds' own figures, with every round's under ``per_round``.

The last line is one JSON object: ``rtt_ms``, ``cross_p50_ms``, ``cross_p99_ms``,
``cross_tps``, ``intra_p50_ms``, ``intra_tps``, ``rtt_multiple_p50`` (and its ``_min`` and
``_max`` over the rounds), ``audit_failures``, and the ``cross_*_ms`` means of BREAKDOWN: where
a cross-region transfer's time goes, read from the ledgers' own histograms before and after each
cross-region run, with each region's mean WAL flush over it (``cross_*_wal_sync_ms``: each of
the three commits of a saga waits for one), and the cores each process used over it
(``cross_cores_*``, loadtests.cpustats; ``client`` is this process, the load generator). The
p99s are over every round's requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import msgspec
import uvloop

from infra.devkeys import ensure_dev_keys
from infra.local import LocalCluster
from infra.processes import metrics_url
from ledger_node.config import BatchConfig
from ledger_node.global_audit import audit_regions
from loadtests.cpustats import CpuMeter
from loadtests.httpload import LoadResult, bearer_post, check_load_arguments, median, run_load
from loadtests.promstats import Series, means_ms, scrape
from loadtests.walstats import wal_syncs
from region_router.http_pool import HttpPool
from region_router.ledger_client import LedgerClient
from runtime.tls import client_context
from wire.service_auth import ServiceKeyring

FUNDS = 10**12
UNLIMITED = {
    "per_client_rate_per_s": 1_000_000,
    "per_client_burst": 10_000_000,
    "per_account_rate_per_s": 1_000_000,
    "per_account_burst": 10_000_000,
}


async def _accounts(client: LedgerClient, region: str, count: int, funds: int) -> list[str]:
    accounts = []
    for _ in range(count):
        response = await client.post(
            "/v1/accounts", {"currency": "EUR"}, idempotency_key=uuid.uuid4().hex
        )
        account = response.json()["id"]
        if funds:
            funded = await client.post(
                "/v1/transfers",
                {
                    "debit_account_id": f"{region}-clearing-EUR",
                    "credit_account_id": account,
                    "amount": funds,
                    "currency": "EUR",
                },
                idempotency_key=uuid.uuid4().hex,
            )
            if funded.status != 201:
                raise RuntimeError(f"funding failed: {funded.body!r}")
        accounts.append(account)
    return accounts


async def _rtt_ms(url: str, samples: int = 60) -> float:
    """Median round trip of a health call through the WAN link (keep-alive, so one trip)."""
    timings = []
    async with aiohttp.ClientSession() as session:
        for _ in range(samples):
            started = time.perf_counter()
            async with session.get(url + "/health/live") as response:
                await response.read()
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return timings[len(timings) // 2]


# Where a cross-region transfer's time goes, from the ledgers' own histograms (promstats.Series:
# the region, the metric family, the labels that pick the series).
BREAKDOWN: dict[str, Series] = {
    "eu_saga_request_ms": (("eu",), "regiongate_ledger_request_seconds", {"route": "/v1/sagas"}),
    "eu_step_call_ms": (("eu",), "regiongate_saga_step_call_seconds", {"action": "credit"}),
    "us_step_request_ms": (
        ("us",),
        "regiongate_ledger_request_seconds",
        {"route": "/v1/saga-steps/{saga_id}/{action}"},
    ),
    "eu_batch_ms": (("eu",), "regiongate_ledger_batch_seconds", {}),
    "eu_batch_lock_and_read_ms": (
        ("eu",),
        "regiongate_ledger_batch_phase_seconds",
        {"phase": "lock_and_read"},
    ),
    "eu_batch_decide_ms": (("eu",), "regiongate_ledger_batch_phase_seconds", {"phase": "decide"}),
    "eu_batch_write_ms": (("eu",), "regiongate_ledger_batch_phase_seconds", {"phase": "write"}),
}


def _metrics_urls(cluster: LocalCluster) -> dict[str, str]:
    return {region: metrics_url(cluster.ledgers[region].port) for region in ("eu", "us")}


async def measure(args, cluster: LocalCluster, token: str) -> dict:
    key = ServiceKeyring.load(str(cluster.service_keys_file)).signing_key
    async with HttpPool() as pool:
        eu = LedgerClient(cluster.ledgers["eu"].url, key, pool)
        us = LedgerClient(cluster.ledgers["us"].url, key, pool)
        payers = await _accounts(eu, "eu", args.clients, FUNDS)
        remote = await _accounts(us, "us", args.clients, 0)
        local = await _accounts(eu, "eu", args.clients, 0)
    rtt_ms = await _rtt_ms(cluster.wan.links["eu>us"].url)
    port = int(cluster.gateway_urls["eu"].rsplit(":", 1)[1])
    run = uuid.uuid4().hex[:8]
    encode = msgspec.json.encode

    def transfers(payees: list[str], label: str):
        def make(n: int) -> bytes:
            index = n // 1_000_000_000
            body = encode(
                {
                    "debit_account_id": payers[index],
                    "credit_account_id": payees[index],
                    "amount": 1,
                    "currency": "EUR",
                }
            )
            return bearer_post("/v1/transfers", body, token, f"{run}-{label}-{n}")

        return make

    common = {
        "host": "127.0.0.1",
        "port": port,
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": min(3.0, max(1.0, args.seconds / 5)),
        "ssl_context": client_context(cluster.secrets_dir / "tls" / "dev-ca.pem"),
    }
    dsns = {region: cluster.postgres[region].dsn(f"ledger_{region}") for region in ("eu", "us")}
    meter = CpuMeter(_process_trees(cluster))
    rounds = []
    for index in range(1, args.rounds + 1):
        before = await scrape(_metrics_urls(cluster))
        wal_before = {region: await wal_syncs(dsn) for region, dsn in dsns.items()}
        meter.start()
        cross = await run_load(make_request=transfers(remote, f"cross{index}"), **common)
        cores = meter.stop()
        breakdown = means_ms(before, await scrape(_metrics_urls(cluster)), BREAKDOWN)
        for region, dsn in dsns.items():
            # Every batch's commit waits for one WAL flush: part of each step's time above.
            breakdown[f"{region}_wal_sync_ms"] = (await wal_syncs(dsn)).mean_ms_since(
                wal_before[region]
            )
        # Cores each process used over the run: how near the machine is to its 2 cores.
        breakdown.update({f"cores_{part}": value for part, value in cores.items()})
        intra = await run_load(make_request=transfers(local, f"intra{index}"), **common)
        rounds.append({"cross": cross, "intra": intra, "breakdown": breakdown})
        print(f"    round {index}: {_round_figures(rtt_ms, rounds[-1])}", flush=True)
    return {"rtt_ms": rtt_ms, "rounds": rounds}


def _process_trees(cluster: LocalCluster) -> dict:
    """The processes whose CPU the cross-region run reports, by part (loadtests.cpustats)."""

    def pid_of(service):
        return lambda: service.process.pid if service.alive() else None

    trees = {}
    for region in ("eu", "us"):
        trees[f"ledger_{region}"] = pid_of(cluster.ledgers[region])
        trees[f"gateway_{region}"] = pid_of(cluster.gateways[region])
        trees[f"postgres_{region}"] = lambda postgres=cluster.postgres[region]: postgres.pid
    trees["wan"] = lambda: cluster.wan.pid
    return trees


def _round_figures(rtt_ms: float, round_: dict) -> dict:
    """One round's figures: its own percentiles, throughputs and breakdown."""
    cross, intra = round_["cross"], round_["intra"]
    cross_p50, intra_p50 = cross.percentile_ms(0.5), intra.percentile_ms(0.5)
    return {
        "cross_p50_ms": round(cross_p50, 2),
        "cross_tps": round(cross.rps, 1),
        "intra_p50_ms": round(intra_p50, 2),
        "intra_tps": round(intra.rps, 1),
        "rtt_multiple_p50": round(cross_p50 / rtt_ms, 3) if rtt_ms else None,
        # What the saga adds over an intra-region transfer at the same concurrency, in round
        # trips: the WAN's share of the latency, apart from this machine's own queueing.
        "added_over_intra_rtt_multiple_p50": round((cross_p50 - intra_p50) / rtt_ms, 3)
        if rtt_ms
        else None,
        **{f"cross_{name}": value for name, value in round_["breakdown"].items()},
    }


def _summary(result: LoadResult) -> dict:
    return {
        "tps": round(result.rps, 1),
        "p50_ms": round(result.percentile_ms(0.5), 2),
        "p99_ms": round(result.percentile_ms(0.99), 2),
        "statuses": result.statuses,
        "errors": {
            status: body.decode(errors="replace") for status, body in result.error_samples.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    # Long: a benchmark script, setup to report, read in order.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--one-way-delay-ms", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of cross, then intra")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--writers", type=int, default=None, help="batch writers per ledger (default: theirs)"
    )
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    if not 0 <= args.one_way_delay_ms <= 5_000:
        parser.error("--one-way-delay-ms must be in [0, 5000]")
    if args.writers is not None and not 1 <= args.writers <= 16:
        parser.error("--writers must be in [1, 16]")
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-saga-"))
    cluster = LocalCluster(
        root=root,
        regions=["eu", "us"],
        wan_one_way_delay_ms=args.one_way_delay_ms,
        fixed_ports=False,
        gateway_extra={"rate_limit": UNLIMITED},
        ledger_extra={} if args.writers is None else {"batch": {"writers": args.writers}},
    )
    try:
        cluster.start()
        token = ensure_dev_keys(cluster.secrets_dir).mint("bench", "admin")
        print(
            f"transfers through the eu gateway, {args.clients} clients, {args.seconds}s each, "
            f"WAN one-way delay {args.one_way_delay_ms} ms: cross-region, then intra-region ...",
            flush=True,
        )
        results = uvloop.run(measure(args, cluster, token))
        rtt_ms = results["rtt_ms"]
        rounds = [_round_figures(rtt_ms, round_) for round_ in results["rounds"]]
        cross = LoadResult.pooled([round_["cross"] for round_ in results["rounds"]])
        intra = LoadResult.pooled([round_["intra"] for round_ in results["rounds"]])
        print(f"    round trip through the WAN link: {rtt_ms:.2f} ms", flush=True)
        print(f"    cross, all rounds {_summary(cross)}", flush=True)
        print(f"    intra, all rounds {_summary(intra)}", flush=True)
        audit = uvloop.run(
            audit_regions({r: c.dsn(f"ledger_{r}") for r, c in cluster.postgres.items()})
        )
        failures = [result.name for result in audit if not result.ok]
        print(f"    audit: {len(audit) - len(failures)} checks passed, failed: {failures}")
        figures = {
            "clients": args.clients,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "one_way_delay_ms": args.one_way_delay_ms,
            "batch_writers": args.writers or BatchConfig().writers,
            "rtt_ms": round(rtt_ms, 2),
            # Medians of the rounds' own figures (p50s, throughputs, multiples, and the means of
            # BREAKDOWN and the WAL flushes), except the p99s: those are over every request.
            **{name: median([r[name] for r in rounds]) for name in rounds[0]},
            "cross_p99_ms": round(cross.percentile_ms(0.99), 2),
            "intra_p99_ms": round(intra.percentile_ms(0.99), 2),
            "rtt_multiple_p50_min": min(r["rtt_multiple_p50"] for r in rounds),
            "rtt_multiple_p50_max": max(r["rtt_multiple_p50"] for r in rounds),
            "non_2xx": sum(n for r in (cross, intra) for s, n in r.statuses.items() if s >= 300),
            "audit_failures": len(failures),
            "per_round": rounds,
        }
        print(json.dumps(figures))
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

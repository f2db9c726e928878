"""Ledger benchmark: ``python -m loadtests.bench_ledger [--seconds N] [--clients C]``.

Measures in one run, at the same client concurrency and the same durability (fsync on,
synchronous_commit on, one fresh PostgreSQL cluster with the ledger's settings):

  (a) PostgreSQL's own pgbench, built-in tpcb-like workload, scale = clients (so pgbench is not
      held back by contention on its own branch rows);
  (b) the ledger node's transfer endpoint over HTTP, uniformly random player accounts;
  (c) the same, where every transfer credits the one clearing account (the hot row: a
      withdrawal; the house, the other hot row, moves only by bets);
  (d) with --bets, bets into the house account (bet bookkeeping on top of the hot row).

This machine is shared and noisy, so the figures that matter are the ratios against (a). A
neighbour's load comes and goes within minutes and moves pgbench and the ledger differently, so
one pgbench run followed by one ledger run gave ratios from 1.39 to 1.93 within an hour. The
runs are therefore interleaved in ``--rounds`` rounds (default 3) of (a), (b), (c) on the same
cluster and node, each round gives its own ratios, and the summary is their median: a pair
measured seconds apart, and no single round's luck.

Each run also reports its mean WAL flush (``*wal_sync_ms``, loadtests.walstats), the durability
both sides pay on every commit, the cores each part used (``*cores``, loadtests.cpustats), and
the mean time of the node's batches and of their phases (``*batch_ms``: lock and read, decide,
write and commit), from its own histograms (loadtests.promstats), and the CPU microseconds per
operation of each part (``*cpu_us``: cores over throughput). ``cpu_ratio`` sets the machine's
CPU per pgbench transaction beside its CPU per ledger transfer: it is what ``ratio`` would be
if the ledger's run kept as many cores busy as pgbench's, so the two together say whether a
shortfall is cost (``cpu_ratio`` low too) or idle cores (``cpu_ratio`` well above ``ratio``).
The two sides are bound differently: pgbench's 32 sessions can keep both cores busy, while the
ledger's batches go one after another (lock and read, decide, write and commit), so its run
leaves part of the machine idle and a slower CPU lengthens every step of that chain. That is
how the same ledger code gave a ratio of 1.45 one day and 0.81 on another (2026-11-27:
pgbench 2.0 cores, the ledger's runs 1.4). The baseline moves on its own too: two invocations
minutes apart later that day gave pgbench 6,584-6,881 and 8,613-9,289 tps at the same 1.41-1.45
PostgreSQL cores, while the ledger held 8,8xx in both, so compare ``ledger_tps`` across runs as
well as ``ratio``.

The ratio depends on the concurrency. pgbench is at its ceiling at 32 clients (both cores
busy): at 64 it did not gain. The ledger's 32 clients form two groups of 16 that take turns:
while one group's batch is being decided and written, the other group's requests queue. More
clients make larger batches, and each batch has a fixed cost. Fitted to two sizes under
callgrind, a batch costs the server about 1.6 million instructions of its own plus 330,000 per
transfer (``bench_instructions --size 4`` gave 729,880 per transfer, ``--size 32`` 380,300).
On 2026-12-02, ``--clients 64`` gave ratios of 1.58 to 1.78 (median 1.69), with batches of 32,
p50 15.4 ms and p99 27.6 ms; within the same hour, 32 clients gave 1.34 to 1.55. The default
stays at 32, the figure every earlier run reported.

The COMMIT's WAL flush lies on the batches' chain. As a diagnostic only, never a setting, the
same node on a database with ``synchronous_commit = off`` ran 7.5 to 24 % faster, over three
interleaved pairs each of uniform and hot runs (a scratch A/B harness: two nodes on one
cluster, not kept). Another sync method is no lever: with ``wal_sync_method = open_datasync``
pgbench rose too, and the ratio's median fell to 1.27.

The event outbox's cost: a second node, on a database of its own in the same cluster, runs with
``events.outbox`` off, and each round runs its uniform and hot loads right after the first
node's. ``outbox_cost`` and ``hot_outbox_cost`` are one minus the ratio of the two throughputs
(target: no more than 0.10), the median of the rounds'. No relay runs in either (no Redis): this
is what writing the rows costs; ``bench_events`` measures publishing them under this load.

The last line printed is one JSON object: the medians, each round's figures under
``per_round``, and latency percentiles over all rounds.

Over 400 lines: a benchmark script, its setup, interleaved runs and report read in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import msgspec
import uvloop

from infra.processes import (
    METRICS_PORT_OFFSET,
    LedgerProcess,
    ensure_service_keys,
    metrics_url,
    write_ledger_config,
)
from infra.services import PostgresCluster, free_port, postgres_bin_dir
from ledger_node.config import BatchConfig
from loadtests.cpustats import CpuMeter, us_per_operation
from loadtests.httpload import LoadResult, check_load_arguments, median, run_load, signed_post
from loadtests.promstats import Series, means, means_ms, scrape
from loadtests.walstats import wal_syncs
from wire.ids import clearing_account_id
from wire.service_auth import ServiceKeyring

REGION = "eu"
CURRENCY = "EUR"
PLAYERS = 10_000
FUNDING = 10**12


def _pgbench_args(cluster: PostgresCluster) -> tuple[str, list[str]]:
    dsn_args = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user]
    return str(postgres_bin_dir() / "pgbench"), dsn_args


def init_pgbench(cluster: PostgresCluster, clients: int) -> None:
    """pgbench's tables at scale = clients, then a checkpoint, so no round starts with the
    initial load's dirty pages still to write."""
    pgbench, dsn_args = _pgbench_args(cluster)
    cluster.create_database("pgbench")
    subprocess.run(
        [pgbench, "-i", "-q", "-s", str(clients), *dsn_args, "pgbench"],
        check=True,
        capture_output=True,
    )
    asyncio.run(_checkpoint(cluster.dsn("pgbench")))


async def _checkpoint(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


def run_pgbench(
    cluster: PostgresCluster, clients: int, seconds: int
) -> tuple[float, dict[str, float | None]]:
    """pgbench's tps, and the cores it and PostgreSQL used meanwhile."""
    pgbench, dsn_args = _pgbench_args(cluster)
    threads = min(clients, os.cpu_count() or 1)
    meter = CpuMeter({"postgres": lambda: cluster.pid}, client_is_child=True)
    meter.start()
    output = subprocess.run(
        [pgbench, "-c", str(clients), "-j", str(threads), "-T", str(seconds), *dsn_args, "pgbench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cores = meter.stop()
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    if match is None:
        raise RuntimeError(f"could not read pgbench output:\n{output}")
    return float(match[1]), cores


async def make_players(dsn: str, count: int) -> list[str]:
    """Players created and funded in bulk through SQL that keeps the ledger balanced: one
    clearing transfer per player, written exactly as the engine writes them."""
    connection = await asyncpg.connect(dsn)
    try:
        ids = [f"{REGION}-bench{i:06d}" for i in range(count)]
        clearing = clearing_account_id(REGION, CURRENCY)
        async with connection.transaction():
            await connection.execute(
                "INSERT INTO accounts (id, region, currency, kind, credits_posted, version) "
                "SELECT id, $2, $3, 'player', $4, 1 FROM unnest($1::text[]) AS id "
                "ON CONFLICT DO NOTHING",
                ids,
                REGION,
                CURRENCY,
                FUNDING,
            )
            await connection.execute(
                "INSERT INTO transfers (id, kind, flow, status, debit_account_id, "
                "credit_account_id, amount, currency, created_at, debit_posted_after, "
                "debit_debits_pending_after, debit_credits_pending_after, debit_version_after, "
                "credit_posted_after, credit_debits_pending_after, "
                "credit_credits_pending_after, credit_version_after) "
                "SELECT 'eu-t-fund-' || id, 'transfer', 'single', 'posted', $2, id, $3, $4, "
                "now(), -$3::bigint * n, 0, 0, n, $3, 0, 0, 1 "
                "FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n)",
                ids,
                clearing,
                FUNDING,
                CURRENCY,
            )
            # Each with its event, as the engine's batch writes them (docs/events.md).
            await connection.execute(
                "INSERT INTO outbox (family, type, ref, aggregate_id, version) "
                "SELECT 'transfer', 'transfer.posted', 'eu-t-fund-' || id, $2, n "
                "FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n)",
                ids,
                clearing,
            )
            await connection.execute(
                "UPDATE accounts SET debits_posted = debits_posted + $2::bigint * $3::bigint, "
                "version = version + $3::bigint WHERE id = $1",
                clearing,
                FUNDING,
                count,
            )
        return ids
    finally:
        await connection.close()


def summarise(results: list[LoadResult]) -> dict:
    """One kind of run over every round."""
    return {
        "tps": median([round(result.rps, 1) for result in results]),
        "batch_size_mean": median([round(result.batch_size_mean, 1) for result in results]),
        "p50_ms": _percentile_ms(results, 0.50),
        "p99_ms": _percentile_ms(results, 0.99),
        "statuses": LoadResult.pooled(results).statuses,
    }


def batch_series(workers: int) -> tuple[Series, dict[str, Series]]:
    """The node's own histograms, every worker's: a batch's size, and its time and phases."""
    sources = tuple(str(index) for index in range(workers))
    phase = "regiongate_ledger_batch_phase_seconds"
    return (sources, "regiongate_ledger_batch_size", {}), {
        "batch": (sources, "regiongate_ledger_batch_seconds", {}),
        "lock_and_read": (sources, phase, {"phase": "lock_and_read"}),
        "decide": (sources, phase, {"phase": "decide"}),
        "write": (sources, phase, {"phase": "write"}),
    }


def round_figures(
    pgbench_tps: float,
    pgbench_wal_sync_ms: float | None,
    runs: list,
    pgbench_cores: dict[str, float | None],
) -> dict:
    """One round: pgbench, then the ledger's runs, with the round's own ratios."""
    uniform, hot = runs[0], runs[1]
    pgbench_cpu_us = us_per_operation(pgbench_cores, pgbench_tps)
    cpu_us = us_per_operation(uniform.cores, uniform.rps)
    figures = {
        "pgbench_tps": round(pgbench_tps, 1),
        "ledger_tps": round(uniform.rps, 1),
        "ledger_hot_tps": round(hot.rps, 1),
        "ratio": round(uniform.rps / pgbench_tps, 3),
        "hot_ratio": round(hot.rps / uniform.rps, 3) if uniform.rps else 0.0,
        "batch_size_mean": round(uniform.batch_size_mean, 1),
        "hot_batch_size_mean": round(hot.batch_size_mean, 1),
        "pgbench_wal_sync_ms": pgbench_wal_sync_ms,
        "wal_sync_ms": uniform.wal_sync_ms,
        "hot_wal_sync_ms": hot.wal_sync_ms,
        "pgbench_cores": pgbench_cores,
        "cores": uniform.cores,
        "hot_cores": hot.cores,
        "pgbench_cpu_us": pgbench_cpu_us,
        "cpu_us": cpu_us,
        "hot_cpu_us": us_per_operation(hot.cores, hot.rps),
        "cpu_ratio": cpu_ratio(pgbench_cpu_us, cpu_us),
        "batch_ms": uniform.phases_ms,
        "hot_batch_ms": hot.phases_ms,
    }
    if len(runs) > 2:
        figures["ledger_bet_tps"] = round(runs[2].rps, 1)
    return figures


def cpu_ratio(pgbench_cpu_us: dict, cpu_us: dict) -> float | None:
    """The machine's CPU per pgbench transaction over its CPU per ledger transfer: the ratio
    the ledger would reach if its run kept as many cores busy as pgbench's does."""
    pgbench, ledger = pgbench_cpu_us.get("machine"), cpu_us.get("machine")
    return round(pgbench / ledger, 3) if pgbench and ledger else None


def _percentile_ms(results: list[LoadResult], fraction: float) -> float:
    return round(LoadResult.pooled(results).percentile_ms(fraction), 2)


async def ledger_runs(
    ledger: LedgerProcess,
    dsn: str,
    keyring: ServiceKeyring,
    players: list[str],
    clients: int,
    seconds: int,
    with_bets: bool,
    round_index: int,
    postgres_pid: Callable[[], int | None],
    workers: int,
) -> list[LoadResult]:

    # Long: the three kinds of run share their setup and measurements.
    key = keyring.signing_key
    metrics = {str(index): metrics_url(ledger.port, index) for index in range(workers)}
    size, phases = batch_series(workers)
    rng = random.Random(round_index)
    hot_account = clearing_account_id(REGION, CURRENCY)
    encode = msgspec.json.encode
    run_id = os.urandom(4).hex()

    def uniform(n: int) -> bytes:
        debit, credit = rng.sample(players, 2)
        body = encode(
            {
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": rng.randint(1, 1000),
                "currency": CURRENCY,
            }
        )
        return signed_post("/v1/transfers", body, key, f"bench-{run_id}-u-{n}")

    def hot(n: int) -> bytes:
        # The same transfers, each crediting the region's one clearing account: a hot row of an
        # iGaming ledger (every withdrawal credits it, as every bet credits the house).
        body = encode(
            {
                "debit_account_id": rng.choice(players),
                "credit_account_id": hot_account,
                "amount": rng.randint(1, 1000),
                "currency": CURRENCY,
            }
        )
        return signed_post("/v1/transfers", body, key, f"bench-{run_id}-h-{n}")

    def bet(n: int) -> bytes:
        # Bets add bet bookkeeping (reference row, rollback tombstones) on top of the hot row.
        body = encode(
            {
                "account_id": rng.choice(players),
                "amount": rng.randint(1, 1000),
                "currency": CURRENCY,
                "reference": f"r-{run_id}-{n}",
            }
        )
        return signed_post("/v1/bets", body, key, f"bench-{run_id}-b-{n}")

    warmup_s = min(2.0, max(0.5, seconds / 5))
    common = {
        "host": "127.0.0.1",
        "port": ledger.port,
        "clients": clients,
        "seconds": seconds,
        "warmup_s": warmup_s,
    }
    results = []
    for make_request in (uniform, hot, bet) if with_bets else (uniform, hot):
        wal_before = await wal_syncs(dsn)
        metrics_before = await scrape(metrics)
        meter = CpuMeter({"node": lambda: ledger.process.pid, "postgres": postgres_pid})
        meter.start()
        result = await run_load(make_request=make_request, **common)
        result.cores = meter.stop()
        metrics_after = await scrape(metrics)
        result.phases_ms = means_ms(metrics_before, metrics_after, phases)
        # From every worker's histogram: /v1/stats would answer for the one worker it reached.
        result.batch_size_mean = means(metrics_before, metrics_after, {"size": size})["size"] or 0.0
        result.wal_sync_ms = (await wal_syncs(dsn)).mean_ms_since(wal_before)
        results.append(result)
    return results


def _start_node(root: Path, cluster, name: str, keys_file: Path, args, events: dict):
    """A ledger node process on a database of its own, with its players made: (process, dsn,
    config path, players)."""
    dsn = cluster.create_database(name.replace("-", "_") + "_bench")
    port = free_port(also_free_at=tuple(METRICS_PORT_OFFSET + i for i in range(args.workers)))
    config = write_ledger_config(
        root / f"{name}.yaml",
        region=REGION,
        dsn=dsn,
        port=port,
        service_keys_file=keys_file,
        extra={
            "workers": args.workers,
            "metrics_port": port + METRICS_PORT_OFFSET,
            "batch": {"wait_us_max": args.batch_wait_us, "writers": args.writers},
            "database": {"dsn": dsn, "pool_size_max": 4},
            "events": events,
        },
    )
    node = LedgerProcess(config, port, root / f"{name}.log")
    node.start()
    return node, dsn, config, asyncio.run(make_players(dsn, PLAYERS))


def main(argv: list[str] | None = None) -> None:
    # Long: a benchmark script, setup to report, read in order.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of pgbench and the ledger"
    )
    parser.add_argument("--workers", type=int, default=1, help="ledger node processes")
    parser.add_argument("--batch-wait-us", type=int, default=0)
    parser.add_argument(
        "--writers",
        type=int,
        default=BatchConfig().writers,
        help="batches in flight per process (default: the ledger's)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    parser.add_argument(
        "--bets",
        action="store_true",
        help="also measure /v1/bets (bet bookkeeping on top of the hot row)",
    )
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)

    # SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so the finally below still stops the
    # ledger node and PostgreSQL and removes the data dir.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-"))
    cluster = PostgresCluster(root / "pg", free_port())
    ledger = ledger_off = None
    try:
        cluster.start()
        init_pgbench(cluster, args.clients)
        keys_file = root / "service_keys"
        ensure_service_keys(keys_file)
        ledger, dsn, config, players = _start_node(root, cluster, "ledger", keys_file, args, {})
        ledger_off, dsn_off, _, players_off = _start_node(
            root, cluster, "ledger-no-outbox", keys_file, args, {"outbox": False}
        )
        keyring = ServiceKeyring.load(str(keys_file))
        print(
            f"{args.rounds} rounds of (a) pgbench tpcb-like, then the ledger node (b) uniform, "
            f"(c) hot{', (d) bets' if args.bets else ''}: {args.clients} clients, "
            f"{args.seconds}s each ...",
            flush=True,
        )
        started = time.perf_counter()
        rounds: list[dict] = []
        results: list[list[LoadResult]] = []
        for index in range(1, args.rounds + 1):
            wal_before = asyncio.run(wal_syncs(cluster.dsn()))
            pgbench_tps, pgbench_cores = run_pgbench(cluster, args.clients, args.seconds)
            pgbench_wal_sync_ms = asyncio.run(wal_syncs(cluster.dsn())).mean_ms_since(wal_before)
            runs = uvloop.run(
                ledger_runs(
                    ledger,
                    dsn,
                    keyring,
                    players,
                    args.clients,
                    args.seconds,
                    args.bets,
                    index,
                    lambda: cluster.pid,
                    args.workers,
                )
            )
            runs_off = uvloop.run(
                ledger_runs(
                    ledger_off,
                    dsn_off,
                    keyring,
                    players_off,
                    args.clients,
                    args.seconds,
                    False,
                    index,
                    lambda: cluster.pid,
                    args.workers,
                )
            )
            figures = round_figures(pgbench_tps, pgbench_wal_sync_ms, runs, pgbench_cores)
            for name, on, off in (("", runs[0], runs_off[0]), ("hot_", runs[1], runs_off[1])):
                figures[f"ledger_{name}tps_no_outbox"] = round(off.rps, 1)
                figures[f"{name}outbox_cost"] = round(1 - on.rps / off.rps, 3) if off.rps else None
            rounds.append(figures)
            results.append(runs)
            print(f"    round {index}: {rounds[-1]}", flush=True)
        uniform = [runs[0] for runs in results]
        hot = [runs[1] for runs in results]
        print(f"    uniform, all rounds: {summarise(uniform)}", flush=True)
        print(f"    hot, all rounds:     {summarise(hot)}", flush=True)
        if args.bets:
            print(
                f"    bets, all rounds:    {summarise([runs[2] for runs in results])}", flush=True
            )
        print(f"    ({time.perf_counter() - started:.1f}s)", flush=True)
        check = subprocess.run(
            [sys.executable, "-m", "regiongate_cli", "ledger", "check", "--config", str(config)],
            capture_output=True,
            text=True,
        )
        print("    invariants after the run: " + check.stdout.strip().splitlines()[-1])

        def middle(name: str) -> float | None:
            return median([record[name] for record in rounds])

        def middle_parts(name: str) -> dict[str, float | None]:
            parts = {part for record in rounds for part in record[name]}
            return {
                part: median([record[name].get(part) for record in rounds])
                for part in sorted(parts)
            }

        figures = {
            "clients": args.clients,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "ledger_workers": args.workers,
            "batch_writers": args.writers,
            # Medians over the rounds; ratio and hot_ratio are the medians of each round's own.
            "pgbench_tps": middle("pgbench_tps"),
            "ledger_tps": middle("ledger_tps"),
            "ledger_hot_tps": middle("ledger_hot_tps"),
            "ratio": middle("ratio"),
            "hot_ratio": middle("hot_ratio"),
            "ledger_tps_no_outbox": middle("ledger_tps_no_outbox"),
            "ledger_hot_tps_no_outbox": middle("ledger_hot_tps_no_outbox"),
            "outbox_cost": middle("outbox_cost"),
            "hot_outbox_cost": middle("hot_outbox_cost"),
            "ratio_min": min(record["ratio"] for record in rounds),
            "ratio_max": max(record["ratio"] for record in rounds),
            # Percentiles over every request of every round.
            "p50_ms": _percentile_ms(uniform, 0.50),
            "p99_ms": _percentile_ms(uniform, 0.99),
            "hot_p50_ms": _percentile_ms(hot, 0.50),
            "hot_p99_ms": _percentile_ms(hot, 0.99),
            "batch_size_mean": middle("batch_size_mean"),
            "hot_batch_size_mean": middle("hot_batch_size_mean"),
            # Mean WAL flush per commit, the median round's: the durability both sides pay.
            "pgbench_wal_sync_ms": middle("pgbench_wal_sync_ms"),
            "wal_sync_ms": middle("wal_sync_ms"),
            "hot_wal_sync_ms": middle("hot_wal_sync_ms"),
            # Cores each part used, the median round's (loadtests.cpustats): near the machine's
            # count a run is CPU-bound; well under it, it waits on its own chain of steps.
            "pgbench_cores": middle_parts("pgbench_cores"),
            "cores": middle_parts("cores"),
            "hot_cores": middle_parts("hot_cores"),
            # CPU microseconds per operation (cores over throughput), the median round's, and
            # the machine's per pgbench transaction over its per transfer: what ratio would be
            # if the ledger kept both cores as busy as pgbench does.
            "pgbench_cpu_us": middle_parts("pgbench_cpu_us"),
            "cpu_us": middle_parts("cpu_us"),
            "hot_cpu_us": middle_parts("hot_cpu_us"),
            "cpu_ratio": middle("cpu_ratio"),
            # A batch's mean time and phases, the median round's: the writer's chain of steps.
            "batch_ms": middle_parts("batch_ms"),
            "hot_batch_ms": middle_parts("hot_batch_ms"),
            "non_2xx": sum(
                n for runs in results for run in runs for s, n in run.statuses.items() if s >= 300
            ),
            "invariants_ok": check.returncode == 0,
        }
        if args.bets:
            figures["ledger_bet_tps"] = middle("ledger_bet_tps")
        figures["per_round"] = rounds
        print(json.dumps(figures))
    finally:
        for node in (ledger, ledger_off):
            if node is not None:
                node.stop()
        cluster.stop("immediate")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

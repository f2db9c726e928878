"""Batch cost benchmark: ``python -m loadtests.bench_batch [--sizes 1,4,16,64] [--rounds N]``.

What one batch costs in CPU, apart from HTTP and apart from this machine's noise: the batcher of
a ledger node is driven directly (no HTTP), one batch at a time, each of ``size`` transfers
between random players (and, in the ``hot`` rows, every transfer crediting the one clearing
account),
and the CPU time of PostgreSQL's processes and of this process (the batcher, and the loop that
feeds it) is read before and after. CPU time per operation moves less between runs than
throughput on a shared machine (about 10 % here, against 30 % for pgbench's throughput), so
this is the figure to compare when changing the batch's SQL or its Python. The fixed cost of a
batch is what the size-1 rows show; the cost of one more operation, the slope towards the
size-64 rows.

The last line is one JSON object: per size and hotness, ``pg_us_per_op``, ``py_us_per_op`` and
``batch_ms`` (wall time of one batch, unloaded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from infra.services import PostgresCluster, free_port
from ledger_node.config import ledger_config_from_dict
from ledger_node.node import LedgerNode
from ledger_node.operations import CreateTransfer
from loadtests.bench_ledger import CURRENCY, REGION, make_players
from loadtests.cpustats import tree_cpu_s
from wire.ids import clearing_account_id
from wire.service_auth import ServiceKeyring

PLAYERS = 2_000
SIZE_MAX = 512


def cluster_cpu_s(cluster: PostgresCluster) -> float:
    """CPU seconds so far of the cluster's postmaster and its children, the ones it has reaped
    included (a backend or an autovacuum worker that ended between two readings)."""
    seconds = tree_cpu_s(cluster.pid)
    if seconds is None:
        raise RuntimeError(f"no running postmaster in {cluster.data_dir}")
    return seconds


async def run_batches(
    node: LedgerNode,
    players: list[str],
    *,
    size: int,
    count: int,
    hot: bool,
    rng: random.Random,
) -> None:
    """count batches of size transfers between random players, one batch at a time: each is
    submitted whole, with no await in between, and committed before the next. In a hot batch
    every transfer credits the clearing account (a withdrawal: the hot row's shape, as the
    house is for bets, which only game operations may move)."""
    hot_account = clearing_account_id(REGION, CURRENCY)
    for _ in range(count):
        futures = []
        for _ in range(size):
            debit, credit = rng.sample(players, 2)
            operation = CreateTransfer(
                debit, hot_account if hot else credit, rng.randint(1, 100), CURRENCY
            )
            futures.append(
                node.batcher.submit(
                    operation,
                    idempotency_key=os.urandom(12).hex(),
                    request_hash=b"bench",
                    name="transfer",
                )
            )
        await asyncio.gather(*futures)


async def measure(cluster: PostgresCluster, dsn: str, sizes: list[int], rounds: int) -> dict:
    config = ledger_config_from_dict(
        {
            "region": REGION,
            "port": 0,
            "database": {"dsn": dsn},
            "currencies": [{"code": CURRENCY, "exponent": 2}],
            # One writer: batches one after another, so each one's cost is its own.
            "batch": {"writers": 1, "size_max": SIZE_MAX},
        }
    )
    node = LedgerNode(config, ServiceKeyring.parse("bench: " + os.urandom(32).hex()))
    await node.start()
    try:
        players = await make_players(dsn, PLAYERS)
        rng = random.Random(1)
        figures = {}
        for size in sizes:
            for hot in (False, True):
                count = max(rounds, 1)
                pg_before, py_before = cluster_cpu_s(cluster), time.process_time()
                started = time.perf_counter()
                await run_batches(node, players, size=size, count=count, hot=hot, rng=rng)
                operations = count * size
                # A backend reaped during the first reading is counted twice there at worst
                # (loadtests.cpustats), which can make a tiny run's difference negative: it is
                # read as no CPU, as CpuMeter reads it.
                pg_s = max(0.0, cluster_cpu_s(cluster) - pg_before)
                row = {
                    "pg_us_per_op": round(1e6 * pg_s / operations, 1),
                    "py_us_per_op": round(1e6 * (time.process_time() - py_before) / operations, 1),
                    "batch_ms": round(1e3 * (time.perf_counter() - started) / count, 3),
                }
                label = f"{size}{'-hot' if hot else ''}"
                figures[label] = row
                print(f"    size {label:>7}: {row}", flush=True)
        return figures
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64", help="batch sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=600, help="batches per size")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes integers separated by commas")
    if not sizes or not all(1 <= size <= SIZE_MAX for size in sizes):
        parser.error(f"each size must be in [1, {SIZE_MAX}]")
    if not 1 <= args.rounds <= 100_000:
        parser.error("--rounds must be in [1, 100000]")
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-batch-"))
    cluster = PostgresCluster(root / "pg", free_port())
    try:
        cluster.start()
        dsn = cluster.create_database("ledger_batch")
        print(f"batches of {args.sizes} transfers, {args.rounds} each, one writer ...", flush=True)
        figures = uvloop.run(measure(cluster, dsn, sizes, args.rounds))
        print(json.dumps({"rounds": args.rounds, "players": PLAYERS, "sizes": figures}))
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

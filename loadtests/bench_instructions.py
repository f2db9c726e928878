"""Database instructions benchmark: ``python -m loadtests.bench_instructions [--batches N]``.

What PostgreSQL executes for one ledger transfer, against what it executes for one pgbench
transaction, counted in instructions under valgrind's callgrind rather than timed. An
instruction count does not move with a neighbour's load: the same code and workload gave the
same count to 0.001 % in runs minutes apart, where CPU time moved by 10 to 20 % and throughput
by 30 %. So this is the figure to compare when changing a batch's SQL, and the one a capacity
planner can scale from where the database has a machine of its own (production): there its
CPU per transfer, not this machine's chain of three processes, bounds a region.

One cluster, started under callgrind (``valgrind`` must be installed: Debian package
``valgrind``), serves both sides, with autovacuum off so that no worker's instructions mix in:

- the ledger: a node's batcher driven directly (no HTTP), as ``bench_batch`` does, one batch of
  ``--size`` transfers at a time between random players (and, in the hot rows, each crediting
  the clearing account), on a batch connection of its own;
- pgbench: its built-in tpcb-like transaction on one connection, ``-c 1``.

Every backend writes its own count when it exits. Each side runs twice on fresh connections, at
two lengths, and the figure is the difference over the extra work, so what a connection costs
once (its start, its catalog caches, the first plans) cancels out. The last line is one JSON
object: ``ledger_instructions_per_transfer``, ``ledger_hot_instructions_per_transfer``,
``pgbench_instructions_per_transaction``, and ``instructions_ratio`` and
``hot_instructions_ratio`` (pgbench's per transaction over the ledger's per transfer: how many
transfers the database runs for the work of one pgbench transaction). The ledger's runs are made
with the event outbox on and off (``..._no_outbox``); ``outbox_cost`` is the fraction of a
transfer's instructions its outbox row adds (the target: no more than 0.10).
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
from dataclasses import dataclass
from pathlib import Path

import uvloop

from infra.services import PostgresCluster, free_port, postgres_bin_dir
from ledger_node.config import ledger_config_from_dict
from ledger_node.node import LedgerNode
from loadtests.bench_batch import run_batches
from loadtests.bench_ledger import CURRENCY, REGION, make_players
from wire.service_auth import ServiceKeyring

PLAYERS = 2_000
PGBENCH_SCALE = 1
TIMEOUT_S = 600
"""Under callgrind the server runs some 20 to 50 times slower; no step may take longer."""

_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def callgrind_totals(text: str) -> int:
    """The instruction total of one callgrind output file."""
    match = _TOTALS.search(text)
    if match is None:
        raise ValueError("no 'totals:' line: not a callgrind output file")
    return int(match[1])


@dataclass(frozen=True, slots=True)
class Pair:
    """Instructions of two runs of one kind of work, at two lengths."""

    short_operations: int
    short_instructions: int
    long_operations: int
    long_instructions: int

    def per_operation(self) -> int:
        """The marginal instructions of one more operation: what a connection costs once
        cancels out between the two runs."""
        extra = self.long_operations - self.short_operations
        if extra <= 0:
            raise ValueError("the long run must do more operations than the short one")
        return round((self.long_instructions - self.short_instructions) / extra)


def server_wrapper(directory: Path, output_dir: Path) -> Path:
    """A script pg_ctl starts in place of the server: the server under callgrind, each process
    writing its count to output_dir/callgrind.<pid> when it exits."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    script = directory / "postgres-under-callgrind"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {valgrind} --tool=callgrind --dump-instr=no "
        f"--callgrind-out-file={output_dir}/callgrind.%p "
        f'{postgres_bin_dir() / "postgres"} "$@"\n'
    )
    script.chmod(0o755)
    return script


def count_files(output_dir: Path) -> dict[int, Path]:
    """Every process's count file so far, by pid: a running process's may exist, unfinished."""
    files = {}
    for path in output_dir.glob("callgrind.*"):
        pid = path.name.split(".", 1)[1]
        if pid.isdigit():
            files[int(pid)] = path
    return files


def counts_by_pid(output_dir: Path) -> dict[int, int]:
    """The count of every process that has ended and written its file in full."""
    counts = {}
    for pid, path in count_files(output_dir).items():
        try:
            counts[pid] = callgrind_totals(path.read_text())
        except ValueError:  # still being written
            continue
    return counts


def wait_for_counts(output_dir: Path, ready, timeout_s: float = 60.0) -> dict[int, int]:
    """Poll until ready(counts) holds: a backend writes its count after its client has gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = counts_by_pid(output_dir)
        if ready(counts):
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"no count from the backend after {timeout_s} s in {output_dir}")
        time.sleep(0.2)


async def ledger_backend_run(
    dsn: str, players: list[str], batches: int, size: int, hot: bool, outbox: bool = True
) -> int:
    """Run batches on a fresh node (so a fresh batch connection); the pid of its backend."""
    config = ledger_config_from_dict(
        {
            "region": REGION,
            "port": 0,
            "database": {
                "dsn": dsn,
                "statement_timeout_ms": TIMEOUT_S * 1000,
                "connect_timeout_ms": 120_000,
            },
            "currencies": [{"code": CURRENCY, "exponent": 2}],
            # One writer that keeps its connection: every batch on one backend.
            "batch": {"writers": 1, "size_max": size, "idle_hold_ms": 60_000},
            # The outbox's rows are written or not; no relay runs (no Redis), so the count
            # is the write's alone.
            "events": {"outbox": outbox},
        }
    )
    node = LedgerNode(config, ServiceKeyring.parse("bench: " + os.urandom(32).hex()))
    await node.start()
    try:
        async with node.batch_pool.acquire() as connection:
            pid = connection.get_server_pid()
        rng = random.Random(batches)
        await run_batches(node, players, size=size, count=batches, hot=hot, rng=rng)
    finally:
        await node.stop()
    return pid


def pgbench_path() -> str:
    return str(postgres_bin_dir() / "pgbench")


def _connection_args(cluster: PostgresCluster) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user, "pgbench"]


def pgbench_run(cluster: PostgresCluster, transactions: int) -> None:
    subprocess.run(
        [pgbench_path(), "-n", "-c", "1", "-t", str(transactions), *_connection_args(cluster)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )


def new_backend_count(output_dir: Path, before: set[int]) -> int:
    """The count of the busiest backend that ended since before: pgbench's client connection
    (pgbench opens another first, to read the scale, which does almost nothing)."""

    def settled(counts: dict[int, int]) -> bool:
        # Every file that appeared is complete: each ended backend has written its count.
        fresh = set(count_files(output_dir)) - before
        return bool(fresh) and len(set(counts) - before) == len(fresh)

    counts = wait_for_counts(output_dir, settled)
    return max(count for pid, count in counts.items() if pid not in before)


def measure(cluster: PostgresCluster, output_dir: Path, dsn: str, players: list[str], args) -> dict:
    short, long = args.batches, args.batches * 3
    figures = {}
    for hot in (False, True):
        for outbox in (True, False):
            pids = [
                uvloop.run(ledger_backend_run(dsn, players, batches, args.size, hot, outbox))
                for batches in (short, long)
            ]
            counts = wait_for_counts(output_dir, lambda counts, pids=pids: set(pids) <= set(counts))
            pair = Pair(short * args.size, counts[pids[0]], long * args.size, counts[pids[1]])
            name = ("hot" if hot else "uniform") + ("" if outbox else "_no_outbox")
            figures[name] = pair.per_operation()
            print(f"    ledger {name}: {figures}", flush=True)
    runs = []
    for transactions in (args.pgbench_transactions, args.pgbench_transactions * 3):
        # Every process with a file so far, ended or not (a running one's file may exist).
        before = set(count_files(output_dir))
        pgbench_run(cluster, transactions)
        runs.append((transactions, new_backend_count(output_dir, before)))
    pgbench = Pair(runs[0][0], runs[0][1], runs[1][0], runs[1][1]).per_operation()
    return {
        "batch_size": args.size,
        "batches": [short, long],
        "pgbench_transactions": [runs[0][0], runs[1][0]],
        "ledger_instructions_per_transfer": figures["uniform"],
        "ledger_hot_instructions_per_transfer": figures["hot"],
        "ledger_instructions_per_transfer_no_outbox": figures["uniform_no_outbox"],
        "ledger_hot_instructions_per_transfer_no_outbox": figures["hot_no_outbox"],
        "outbox_cost": round(figures["uniform"] / figures["uniform_no_outbox"] - 1, 4),
        "outbox_hot_cost": round(figures["hot"] / figures["hot_no_outbox"] - 1, 4),
        "pgbench_instructions_per_transaction": pgbench,
        "instructions_ratio": round(pgbench / figures["uniform"], 3),
        "hot_instructions_ratio": round(pgbench / figures["hot"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="batches in the short run")
    parser.add_argument("--size", type=int, default=16, help="transfers per batch")
    parser.add_argument(
        "--pgbench-transactions", type=int, default=400, help="transactions in the short run"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batches <= 10_000 or not 1 <= args.size <= 512:
        parser.error("--batches must be in [1, 10000] and --size in [1, 512]")
    if not 1 <= args.pgbench_transactions <= 100_000:
        parser.error("--pgbench-transactions must be in [1, 100000]")
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the server and removes its files.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-instructions-"))
    output_dir = root / "callgrind"
    output_dir.mkdir()
    output_dir.chmod(0o777)  # the server may run as another user (infra.services)
    cluster = PostgresCluster(
        root / "pg",
        free_port(),
        settings={"autovacuum": "off"},
        server_path=str(server_wrapper(root, output_dir)),
    )
    try:
        cluster.start()
        dsn = cluster.create_database("ledger_instructions")
        cluster.create_database("pgbench")
        subprocess.run(
            [pgbench_path(), "-i", "-q", "-s", str(PGBENCH_SCALE), *_connection_args(cluster)],
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
        # A first node applies the migrations and the currencies, then the players are made.
        uvloop.run(ledger_backend_run(dsn, [], 0, args.size, hot=False))
        players = asyncio.run(make_players(dsn, PLAYERS))
        print(
            f"PostgreSQL under callgrind: ledger batches of {args.size} ({args.batches} and "
            f"{args.batches * 3}), pgbench tpcb-like ({args.pgbench_transactions} and "
            f"{args.pgbench_transactions * 3} transactions) ...",
            flush=True,
        )
        print(json.dumps(measure(cluster, output_dir, dsn, players, args)))
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

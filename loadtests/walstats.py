"""How long PostgreSQL takes to flush its write-ahead log, read from ``pg_stat_wal``.

Every batch's COMMIT waits for one flush (synchronous_commit is on), so the flush is part of
every transfer's latency and, for an account every batch locks, part of how long that lock is
held. On this project's 2-core machines one flush took 0.085 ms idle (``pg_test_fsync``), about
0.2 ms in bench_saga's cross-region run and 0.4 ms in bench_ledger's (pgbench's own: 0.34). The
clusters that ``infra.services`` makes time their flushes (``track_wal_io_timing``), so the
benchmarks print the mean flush time over each run beside their own figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class WalSyncs:
    count: float
    milliseconds: float

    def mean_ms_since(self, before: WalSyncs) -> float | None:
        """Mean flush time between two readings; None when none happened (or none was timed)."""
        count = self.count - before.count
        spent = self.milliseconds - before.milliseconds
        return round(spent / count, 3) if count > 0 and spent > 0 else None


async def wal_syncs(dsn: str) -> WalSyncs:
    """The cluster's flush count and time so far. Backends report WAL statistics about once a
    second, so a reading may lag the last second of work; over a run of several seconds the
    mean is what to read, not the count."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
    finally:
        await connection.close()
    return WalSyncs(float(row["wal_sync"]), float(row["wal_sync_time"]))

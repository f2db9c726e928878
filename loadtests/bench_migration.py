"""Legacy migration benchmark: ``python -m loadtests.bench_migration [--rows N] [--seed S]
[--chunk-rows C]``.

One PostgreSQL cluster of its own holds three regions' databases (eu, us, ap, each migrated as a
node migrates it). A legacy export of N rows with every kind of mess (identity.legacy.sample)
is written first (not timed), then:

  migration  ``identity.legacy.migrate`` of the export: stage, decide, claims, ids, players,
             each phase's rows a second and the whole's;
  copy       the floor: a plain ``COPY`` of the same file into a table with the indexes a
             migrated player has (unique public id, unique legacy id, and the username), on the
             same PostgreSQL, in the same run.

  writes     the least the migration's writes cost: the same COPY, then each user's claim,
             public id, player, history row and event, in tables with the live tables'
             indexes and foreign key, one set-based INSERT each (WRITE_FLOOR).

It prints their rates, the ratio to the plain COPY (target: no less than 0.3) and to the
writes, the time this machine would take for 300 million rows at the migration's rate, and
the peak resident memory of this process (the migration runs in it; the export is streamed
and every load is by chunks, so it does not grow with N). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from identity.legacy.migrate import Target, migrate
from identity.legacy.progress import Progress
from identity.legacy.report import build_report
from identity.legacy.sample import write_sample
from identity.legacy.source import HomeRules, read_file
from identity.migrations import IDENTITY_MIGRATIONS
from identity.usernames import UsernameRules
from infra.identity_commands import DEFAULT_COUNTRIES
from infra.local import even_slot_owners
from infra.services import PostgresCluster, free_port
from ledger_node.migrations import apply_migrations

REGIONS = ("eu", "us", "ap")
TARGET_ROWS = 300_000_000
FLOOR_TABLE = """
CREATE TABLE floor (legacy_id text, username text, created_at text, country text, region text,
                    email text, player_id text DEFAULT md5(random()::text));
CREATE UNIQUE INDEX ON floor (player_id);
CREATE INDEX ON floor (legacy_id);
CREATE INDEX ON floor (username);
"""


async def _prepare(cluster: PostgresCluster) -> dict[str, str]:
    dsns = {region: cluster.create_database(f"bench_{region}") for region in REGIONS}
    for dsn in dsns.values():
        connection = await asyncpg.connect(dsn)
        try:
            await apply_migrations(connection)
            await IDENTITY_MIGRATIONS.apply(connection)
        finally:
            await connection.close()
    return dsns


WRITE_FLOOR_TABLES = """
DROP SCHEMA IF EXISTS floor_all CASCADE;
CREATE SCHEMA floor_all;
CREATE UNLOGGED TABLE floor_all.export (legacy_id text, username text, created_at text,
                                        country text, region text, email text);
CREATE TABLE floor_all.claims (LIKE identity.claims INCLUDING ALL);
CREATE TABLE floor_all.public_ids (LIKE identity.public_ids INCLUDING ALL);
CREATE TABLE floor_all.players (LIKE identity.players INCLUDING ALL);
CREATE TABLE floor_all.username_history (LIKE identity.username_history INCLUDING ALL);
ALTER TABLE floor_all.username_history ADD FOREIGN KEY (player_id) REFERENCES floor_all.players;
CREATE TABLE floor_all.events (LIKE identity.events INCLUDING ALL);
"""
WRITE_FLOOR = """
CREATE TEMP TABLE users AS SELECT DISTINCT ON (legacy_id) legacy_id, 'pl_' || md5(legacy_id) AS id,
       md5('n' || legacy_id) AS skeleton, coalesce(username, '') AS username
FROM floor_all.export ORDER BY legacy_id;
INSERT INTO floor_all.claims (skeleton, username, slot, claim_id, player_id, home_region, state)
SELECT skeleton, username, 0, 'mg:f:' || legacy_id, id, 'us', 'live' FROM users;
INSERT INTO floor_all.public_ids (player_id, home_region) SELECT id, 'us' FROM users;
INSERT INTO floor_all.players (id, status, username, skeleton, claim_id, owner_region, version,
                               legacy_run, legacy_id)
SELECT id, 'active', username, skeleton, 'mg:f:' || legacy_id, 'us', 1, 'f', legacy_id FROM users;
INSERT INTO floor_all.username_history (player_id, claim_id, username, skeleton, owner_region)
SELECT id, 'mg:f:' || legacy_id, username, skeleton, 'us' FROM users;
INSERT INTO floor_all.events (id, type, aggregate_id, version, body)
SELECT 'evm_' || substr(id, 4), 'player.created', id, 1,
       jsonb_build_object('player_id', id, 'region', 'us', 'username', username) FROM users;
"""
"""The least the migration's writes can cost here: the export COPYed once, then each user's
rows in the tables a migrated user needs (claim, public id, player, history, event), each
table with its indexes, one set-based statement each, no decision and no checkpoint."""


async def _write_floor(dsn: str, path: Path) -> float:
    """Seconds to write what every migrated user needs, by the cheapest SQL (WRITE_FLOOR)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(WRITE_FLOOR_TABLES)
        started = time.perf_counter()
        await connection.copy_to_table(
            "export",
            schema_name="floor_all",
            source=path,
            columns=["legacy_id", "username", "created_at", "country", "region", "email"],
            format="csv",
            header=True,
        )
        await connection.execute(WRITE_FLOOR)
        return time.perf_counter() - started
    finally:
        await connection.execute("DROP SCHEMA floor_all CASCADE")
        await connection.close()


async def _copy_floor(dsn: str, path: Path) -> float:
    """Seconds to COPY the export into a table with a player's indexes."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP TABLE IF EXISTS floor")
        await connection.execute(FLOOR_TABLE)
        started = time.perf_counter()
        await connection.copy_to_table(
            "floor",
            source=path,
            columns=["legacy_id", "username", "created_at", "country", "region", "email"],
            format="csv",
            header=True,
        )
        return time.perf_counter() - started
    finally:
        await connection.close()


def _target(dsns: dict[str, str], chunk_rows: int) -> Target:
    countries = {code: region for region, codes in DEFAULT_COUNTRIES.items() for code in codes}
    return Target(
        dsns,
        even_slot_owners(list(REGIONS)),
        dsns["eu"],
        UsernameRules(),
        b"bench-migration-secret-not-a-real-one",
        HomeRules(frozenset(REGIONS), countries, "eu"),
        chunk_rows,
    )


async def measure(args, dsns: dict[str, str], path: Path) -> dict:
    target = _target(dsns, args.chunk_rows)
    started = time.perf_counter()
    phases = await migrate(
        lambda skip: read_file(path, target.homes, skip),
        target,
        "bench",
        progress=Progress(quiet=not args.progress),
    )
    migration_s = time.perf_counter() - started
    report = await build_report(dsns["eu"], "bench")
    copy_s = await _copy_floor(dsns["us"], path)
    migration_rate = args.rows / migration_s
    copy_rate = args.rows / copy_s
    write_floor_rate = args.rows / await _write_floor(dsns["ap"], path)
    return {
        "rows": args.rows,
        "players": report["players"],
        "migration_rows_per_s": round(migration_rate),
        "copy_rows_per_s": round(copy_rate),
        "ratio": round(migration_rate / copy_rate, 3),
        "write_floor_rows_per_s": round(write_floor_rate),
        "ratio_to_write_floor": round(migration_rate / write_floor_rate, 3),
        "phases_rows_per_s": {name: round(rate) for name, rate in phases.rates.items()},
        "migration_s": round(migration_s, 1),
        "copy_s": round(copy_s, 1),
        "hours_for_300m_rows": round(TARGET_ROWS / migration_rate / 3600, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "by_outcome": report["by_outcome"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--progress", action="store_true", help="show each phase's progress")
    args = parser.parse_args(argv)
    if not 1_000 <= args.rows <= 1_000_000_000:
        parser.error("--rows must be in [1000, 1000000000]")
    root = Path(tempfile.mkdtemp(prefix="regiongate-bench-migration-"))
    cluster = PostgresCluster(root / "pg", free_port())
    try:
        path = root / "legacy.csv"
        print(f"writing a legacy export of {args.rows} rows ...", flush=True)
        write_sample(path, args.rows, args.seed)
        cluster.start()
        dsns = asyncio.run(_prepare(cluster))
        print("migrating it into eu, us and ap, then a plain COPY of it ...", flush=True)
        figures = asyncio.run(measure(args, dsns, path))
        print(
            f"    migration {figures['migration_rows_per_s']:,} rows/s "
            f"({figures['phases_rows_per_s']}), plain COPY {figures['copy_rows_per_s']:,} "
            f"rows/s, ratio {figures['ratio']}; its writes alone "
            f"{figures['write_floor_rows_per_s']:,} rows/s, ratio "
            f"{figures['ratio_to_write_floor']}; 300 million rows: "
            f"{figures['hours_for_300m_rows']} h; peak RSS {figures['peak_rss_mib']} MiB",
            flush=True,
        )
        print(json.dumps(figures))
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The migration's phases (docs/migration.md):

1. **stage**: the export, streamed, each name checked by the live path's rules, into an
   unlogged table of the work database, by chunks, each with its checkpoint (the lines done);
2. **decide**: one transaction that turns the staged rows and a snapshot of the live players'
   names into one decision per legacy user (identity.legacy.sql);
3. **claims**: each owner region takes its slots' names, by chunks, each chunk with its
   checkpoint in the same transaction; a name a live player took since the decision is
   recorded as a conflict;
4. **conflicts**: such users get their generated names instead;
5. **ids**: each owner of id slots records its players' homes;
6. **players**: each home region gets its players, their history rows and their events.

Every load is ``INSERT ... ON CONFLICT DO NOTHING`` behind a checkpoint kept with it (a
player's history row and event follow only the player rows the statement inserted), so a
``kill -9`` anywhere and a rerun give what one run gives; a rerun of a finished run writes
nothing. Memory is bounded by ``chunk_rows``: the export is streamed, the decision is SQL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import asyncpg

from identity.db import atomic
from identity.legacy import sql
from identity.legacy.names import digit_skeletons, staged
from identity.legacy.progress import Progress
from identity.legacy.source import HomeRules, Malformed
from identity.usernames import UsernameRules, reserved_skeletons
from runtime.sagas import CrashPoints
from wire.ids import IDENTITY_SLOTS, identity_slot

log = logging.getLogger("regiongate.identity.migrate")

RUN_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,39}$")
ROUNDS_MAX = 64
ROUNDS_NUMBERED = 16
"""Rounds of numbers a name tries before the rest of its twins take generated names."""
CRASH_AT_ENV = "REGIONGATE_MIGRATION_CRASH_AT"
CRASH_POINTS = CrashPoints(CRASH_AT_ENV, frozenset({"stage", "decide", "claims", "players"}))
STAGED_COLUMNS = [
    "run", "line", "legacy_id", "raw_username", "canonical", "skeleton", "rule", "repaired",
    "repaired_skeleton", "generated", "generated_skeleton", "player_id", "created_at",
    "date_broken", "home_region", "slot", "id_slot",
]  # fmt: skip


class MigrationError(Exception):
    """The migration cannot go on (a bad argument, a database that refuses it)."""


@dataclass
class Target:
    """Where a run writes: every region's database, the slot map, and the work database."""

    dsns: dict[str, str]
    slot_owners: tuple[str, ...]
    work_dsn: str
    rules: UsernameRules
    secret: bytes
    homes: HomeRules
    chunk_rows: int = 10_000

    def __post_init__(self) -> None:
        if len(self.slot_owners) != IDENTITY_SLOTS:
            raise MigrationError("the directory assigns no identity slots")
        unknown = set(self.slot_owners) - set(self.dsns)
        if unknown:
            raise MigrationError(f"slots owned by regions without a database: {sorted(unknown)}")
        if not 100 <= self.chunk_rows <= 1_000_000:
            raise MigrationError("chunk_rows must be in [100, 1000000]")
        if len(self.secret) < 16:
            raise MigrationError("the migration secret must be at least 16 bytes")


@dataclass
class Phases:
    """Rows a second of each phase of this invocation (a resumed one's are of what it did)."""

    rates: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


def claim_prefix(run: str) -> str:
    return f"mg:{run}:"


async def migrate(
    source, target: Target, run: str, *, dry_run: bool = False, progress: Progress | None = None
) -> Phases:
    """Run (or resume) a migration. source(skip_lines) yields LegacyRow or Malformed, sync or
    async. With dry_run only stage and decide run, under a run of their own that is removed
    after the report (the caller reports before calling discard)."""
    if not RUN_PATTERN.match(run):
        raise MigrationError("run: 1 to 40 of a-z 0-9 . - starting with a letter or digit")
    progress = progress or Progress(quiet=True)
    phases = Phases()
    work = await asyncpg.connect(target.work_dsn)
    try:
        await work.execute(sql.WORK_SCHEMA)
        await work.execute(
            "INSERT INTO migration.runs (run) VALUES ($1) ON CONFLICT DO NOTHING", run
        )
        state = await work.fetchrow("SELECT * FROM migration.runs WHERE run = $1", run)
        if not state["staging_done"]:
            await _stage(work, source, target, run, progress, phases)
        if not state["decided"]:
            await _snapshot_live(work, target, run, progress)
            await _decide(work, target, run, progress, phases)
        if dry_run:
            return phases
        await _load(work, target, run, "claims", "owner_region", progress, phases)
        await _resolve_conflicts(work, target, run)
        await _load(work, target, run, "ids", "id_owner_region", progress, phases)
        await _load(work, target, run, "players", "home_region", progress, phases)
        await work.execute("UPDATE migration.runs SET finished = true WHERE run = $1", run)
    finally:
        progress.finish()
        await work.close()
    return phases


async def discard(work_dsn: str, run: str) -> None:
    """Remove a run's rows from the work database (a dry run's, after its report)."""
    work = await asyncpg.connect(work_dsn)
    try:
        async with work.transaction():
            for table in ("staged", "malformed", "live", "slots", "decisions", "runs"):
                await work.execute(f"DELETE FROM migration.{table} WHERE run = $1", run)
    finally:
        await work.close()


async def _rows(source, skip: int) -> AsyncIterator:
    produced = source(skip)
    if isinstance(produced, Iterable):
        for item in produced:
            yield item
    else:
        async for item in produced:
            yield item


async def _stage(work, source, target: Target, run: str, progress: Progress, phases) -> None:
    state = await work.fetchrow("SELECT * FROM migration.runs WHERE run = $1", run)
    staged_rows = await work.fetchval("SELECT count(*) FROM migration.staged WHERE run = $1", run)
    skip = state["staged_lines"]
    if staged_rows != state["staged_rows"]:
        # The unlogged staging did not survive a PostgreSQL crash: stage again from the start.
        async with work.transaction():
            await work.execute("DELETE FROM migration.staged WHERE run = $1", run)
            await work.execute("DELETE FROM migration.malformed WHERE run = $1", run)
            await work.execute(
                "UPDATE migration.runs SET staged_lines = 0, staged_rows = 0, malformed_rows = 0"
                " WHERE run = $1",
                run,
            )
        skip = 0
    progress.start("stage", None)
    rows: list[tuple] = []
    bad: list[tuple] = []
    last_line = skip
    chunks = 0
    async for item in _rows(source, skip):
        last_line = item.line
        if isinstance(item, Malformed):
            bad.append((run, item.line, item.legacy_id, item.reason))
        else:
            rows.append(staged(run, item, target.rules, target.secret))
        if len(rows) + len(bad) >= target.chunk_rows:
            await _flush_stage(work, run, rows, bad, last_line)
            progress.advance(len(rows) + len(bad))
            rows, bad = [], []
            chunks += 1
            if chunks == 1:
                CRASH_POINTS.reached("stage")
    await _flush_stage(work, run, rows, bad, last_line)
    progress.advance(len(rows) + len(bad))
    await work.execute("UPDATE migration.runs SET staging_done = true WHERE run = $1", run)
    phases.rates["stage"] = progress.finish()


async def _flush_stage(work, run: str, rows: list, bad: list, last_line: int) -> None:
    async with work.transaction():
        if rows:
            await work.copy_records_to_table(
                "staged", schema_name="migration", records=rows, columns=STAGED_COLUMNS
            )
        if bad:
            await work.copy_records_to_table(
                "malformed",
                schema_name="migration",
                records=bad,
                columns=["run", "line", "legacy_id", "reason"],
            )
        await work.execute(
            "UPDATE migration.runs SET staged_lines = $2, staged_rows = staged_rows + $3,"
            " malformed_rows = malformed_rows + $4 WHERE run = $1",
            run,
            last_line,
            len(rows),
            len(bad),
        )


async def _snapshot_live(work, target: Target, run: str, progress: Progress) -> None:
    """The slot map, and every live region's names (but this run's own), for the decision."""
    async with work.transaction():
        await work.execute("DELETE FROM migration.live WHERE run = $1", run)
        await work.execute("DELETE FROM migration.slots WHERE run = $1", run)
        await work.copy_records_to_table(
            "slots",
            schema_name="migration",
            records=[(run, slot, region) for slot, region in enumerate(target.slot_owners)],
        )
    progress.start("live names", None)
    prefix = claim_prefix(run)
    for region in sorted(target.dsns):
        connection = await asyncpg.connect(target.dsns[region])
        try:
            async with connection.transaction(readonly=True):
                batch = []
                async for record in connection.cursor(
                    "SELECT skeleton FROM identity.claims WHERE left(claim_id, length($1)) <> $1",
                    prefix,
                ):
                    batch.append((run, record["skeleton"]))
                    if len(batch) >= target.chunk_rows:
                        await _copy_live(work, batch)
                        progress.advance(len(batch))
                        batch = []
                await _copy_live(work, batch)
                progress.advance(len(batch))
        finally:
            await connection.close()
    progress.finish()


async def _copy_live(work, batch: list) -> None:
    if batch:
        await work.copy_records_to_table("live", schema_name="migration", records=batch)


async def _decide(work, target: Target, run: str, progress: Progress, phases) -> None:
    staged_rows = await work.fetchval("SELECT staged_rows FROM migration.runs WHERE run = $1", run)
    progress.start("decide", staged_rows)
    reserved = sorted(reserved_skeletons(target.rules))
    async with work.transaction():
        await work.execute("DELETE FROM migration.decisions WHERE run = $1", run)
        await work.execute("SET LOCAL work_mem = '256MB'")
        await work.execute(sql.FIRSTS, run)
        await work.execute(sql.RANKED)
        await work.execute(sql.OUTCOMES)
        await work.execute(sql.TAKEN.split(";")[0])
        await work.execute(sql.TAKEN.split(";")[1])
        await work.execute(sql.TAKEN.split(";")[2], run)
        for statement in sql.PENDING.split(";"):
            if statement.strip():
                await work.execute(statement)
        await work.execute("ANALYZE pending")
        digits = digit_skeletons()
        for rounds in range(1, ROUNDS_MAX + 1):
            await work.execute(sql.ROUND, target.rules.length_max, digits, reserved)
            left = await work.fetchval("SELECT count(*) FROM pending WHERE final IS NULL")
            if not left:
                log.info("decide: every name settled in %d rounds", rounds)
                break
            first, second = sql.NEXT_ROUND.split(";")
            await work.execute(first)
            await work.execute(second, target.rules.length_max)
            if rounds == ROUNDS_NUMBERED:
                # Numbers this far apart are all taken (a name with thousands of numbered
                # twins): the rows still without one take their generated names instead.
                await work.execute(sql.GIVE_UP_NUMBERS)
        else:
            raise MigrationError(f"{left} names still undecided after {ROUNDS_MAX} rounds")
        await work.execute(sql.DECIDE, list(target.slot_owners))
        CRASH_POINTS.reached("decide")
        await work.execute("UPDATE migration.runs SET decided = true WHERE run = $1", run)
    progress.advance(staged_rows)
    phases.rates["decide"] = progress.finish()


LOADS = {
    "claims": (
        "legacy_id, skeleton, username, slot, player_id, home_region",
        "legacy_id text, skeleton text, username text, slot integer, player_id text,"
        " home_region text",
        """
        WITH inserted AS (
            INSERT INTO identity.claims
                (skeleton, username, slot, claim_id, player_id, home_region, state)
            SELECT skeleton, username, slot, $2 || legacy_id, player_id, home_region, 'live'
            FROM migration_claims
            ON CONFLICT DO NOTHING
            RETURNING claim_id
        ), lost AS (
            SELECT m.legacy_id, m.skeleton FROM migration_claims m
            WHERE NOT EXISTS (SELECT 1 FROM inserted i WHERE i.claim_id = $2 || m.legacy_id)
              AND NOT EXISTS (
                  SELECT 1 FROM identity.claims c WHERE c.claim_id = $2 || m.legacy_id)
        )
        INSERT INTO identity.migration_conflicts (run, legacy_id, skeleton)
        SELECT $1, legacy_id, skeleton FROM lost ON CONFLICT DO NOTHING
        """,
        ("run", "prefix"),
    ),
    "ids": (
        "legacy_id, player_id, home_region",
        "legacy_id text, player_id text, home_region text",
        """
        INSERT INTO identity.public_ids (player_id, home_region)
        SELECT player_id, home_region FROM migration_ids
        ON CONFLICT DO NOTHING
        """,
        (),
    ),
    "players": (
        "legacy_id, player_id, username, skeleton, owner_region, generated, outcome",
        "legacy_id text, player_id text, username text, skeleton text, owner_region text,"
        " generated boolean, outcome text",
        """
        WITH players AS (
            INSERT INTO identity.players
                (id, status, username, skeleton, claim_id, owner_region, username_generated,
                 username_refusal, version, legacy_run, legacy_id)
            SELECT player_id, 'active', username, skeleton, $2 || legacy_id, owner_region,
                   generated, CASE WHEN generated THEN outcome END, 1, $1, legacy_id
            FROM migration_players
            ON CONFLICT DO NOTHING
            RETURNING id, username, skeleton, claim_id, owner_region
        ), history AS (
            INSERT INTO identity.username_history
                (player_id, claim_id, username, skeleton, owner_region)
            SELECT id, claim_id, username, skeleton, owner_region FROM players
        )
        INSERT INTO identity.events (id, type, aggregate_id, version, body)
        SELECT 'evm_' || substr(id, 4), 'player.created', id, 1,
               jsonb_build_object('player_id', id, 'region', $3::text, 'username', username,
                                  'migrated', true)
        FROM players
        """,
        ("run", "prefix", "region"),
    ),
}


async def _load(work, target: Target, run: str, phase: str, column: str, progress, phases):
    """One phase, every region at once (each on its own connections), by chunks."""
    total = await work.fetchval("SELECT count(*) FROM migration.decisions WHERE run = $1", run)
    progress.start(phase, total)
    await asyncio.gather(
        *(_load_region(target, run, phase, column, region, progress) for region in target.dsns)
    )
    phases.rates[phase] = progress.finish()
    phases.rows[phase] = total


async def load_rows(connection, phase: str, rows, run: str, region: str) -> None:
    """Load rows of decisions (LOADS[phase]'s columns) into a region, in the caller's
    transaction or one of its own: the chunked load and the sync's one-row changes alike."""
    _, types, insert, parameters = LOADS[phase]
    values = {"run": run, "prefix": claim_prefix(run), "region": region}
    await connection.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS migration_{phase} ({types}) ON COMMIT DELETE ROWS"
    )
    async with atomic(connection):
        await connection.copy_records_to_table(f"migration_{phase}", records=rows)
        await connection.execute(insert, *(values[name] for name in parameters))


class Connections:
    """One connection per region for a run of single-row writes (the sync, the conflicts),
    opened when first needed and closed together."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._open: dict[str, asyncpg.Connection] = {}

    async def __call__(self, region: str) -> asyncpg.Connection:
        if region not in self._open:
            self._open[region] = await asyncpg.connect(self._target.dsns[region])
        return self._open[region]

    async def close(self) -> None:
        for connection in self._open.values():
            await connection.close()
        self._open.clear()


def numbered(name: str, skeleton: str, length_max: int, limit: int = 1000):
    """The name, then name2, name3, ... (each with its skeleton) while they fit."""
    table = str.maketrans("0123456789", digit_skeletons())
    yield name, skeleton
    for number in range(2, limit):
        suffix = str(number)
        if len(name) + len(suffix) <= length_max:
            yield name + suffix, skeleton + suffix.translate(table)


async def claim_name(
    regions: Connections,
    target: Target,
    skeleton: str,
    name: str,
    claim_id: str,
    player_id: str,
    home: str,
) -> tuple[str, int] | None:
    """Claim a name at its owner for one user: (owner, slot) if it is (now) this claim's,
    None if someone else has it."""
    slot = identity_slot(skeleton)
    owner = target.slot_owners[slot]
    connection = await regions(owner)
    holder = await connection.fetchval(
        "INSERT INTO identity.claims"
        " (skeleton, username, slot, claim_id, player_id, home_region, state)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'live') ON CONFLICT DO NOTHING RETURNING claim_id",
        skeleton, name, slot, claim_id, player_id, home,
    ) or await connection.fetchval(
        "SELECT claim_id FROM identity.claims WHERE skeleton = $1", skeleton
    )  # fmt: skip
    return (owner, slot) if holder == claim_id else None


async def _load_region(target: Target, run: str, phase: str, column: str, region, progress):
    columns = LOADS[phase][0]
    work = await asyncpg.connect(target.work_dsn)
    connection = await asyncpg.connect(target.dsns[region])
    try:
        mark = await connection.fetchrow(
            "SELECT last_key, rows FROM identity.migration_checkpoints"
            " WHERE run = $1 AND phase = $2",
            run,
            phase,
        )
        last_key, done = (mark["last_key"], mark["rows"]) if mark else ("", 0)
        progress.skip(done)
        chunks = 0
        while True:
            chunk = await work.fetch(
                f"SELECT {columns} FROM migration.decisions"
                f" WHERE run = $1 AND {column} = $2 AND legacy_id > $3"
                f" ORDER BY legacy_id LIMIT $4",
                run,
                region,
                last_key,
                target.chunk_rows,
            )
            if not chunk:
                return
            last_key, done = chunk[-1]["legacy_id"], done + len(chunk)
            async with connection.transaction():
                await load_rows(connection, phase, chunk, run, region)
                await connection.execute(
                    "INSERT INTO identity.migration_checkpoints (run, phase, last_key, rows)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (run, phase) DO UPDATE"
                    " SET last_key = EXCLUDED.last_key, rows = EXCLUDED.rows,"
                    " updated_at = now()",
                    run,
                    phase,
                    last_key,
                    done,
                )
            progress.advance(len(chunk))
            chunks += 1
            if chunks == 1 and phase in ("claims", "players"):
                CRASH_POINTS.reached(phase)
    finally:
        await connection.close()
        await work.close()


async def _resolve_conflicts(work, target: Target, run: str) -> None:
    """Users whose decided name a live player claimed after the decision get their generated
    name (numbered if that too is taken), in an order that a rerun repeats."""
    regions = Connections(target)
    try:
        for region in sorted(target.dsns):
            connection = await regions(region)
            lost = await connection.fetch(
                "SELECT legacy_id FROM identity.migration_conflicts WHERE run = $1"
                " ORDER BY legacy_id",
                run,
            )
            for record in lost:
                await _give_spare(work, regions, target, run, record["legacy_id"])
                await connection.execute(
                    "DELETE FROM identity.migration_conflicts WHERE run = $1 AND legacy_id = $2",
                    run,
                    record["legacy_id"],
                )
    finally:
        await regions.close()


async def _give_spare(work, regions: Connections, target: Target, run: str, legacy_id: str):
    decision = await work.fetchrow(
        "SELECT * FROM migration.decisions WHERE run = $1 AND legacy_id = $2", run, legacy_id
    )
    names = numbered(decision["spare"], decision["spare_skeleton"], target.rules.length_max)
    for name, skeleton in names:
        taken = await claim_name(
            regions, target, skeleton, name, decision["claim_id"], decision["player_id"],
            decision["home_region"],
        )  # fmt: skip
        if taken is not None:
            owner, slot = taken
            await work.execute(
                "UPDATE migration.decisions SET username = $3, skeleton = $4, slot = $5,"
                " owner_region = $6, outcome = 'lost-to-live', generated = true"
                " WHERE run = $1 AND legacy_id = $2",
                run,
                legacy_id,
                name,
                skeleton,
                slot,
                owner,
            )
            return
    raise MigrationError(f"no free name for legacy user {legacy_id}")

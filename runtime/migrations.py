"""Versioned schema migrations, applied at start: one set per service that owns tables (the
ledger's, identity's), each with its own record of what is applied.

Files ``NNNN_name.sql`` are applied in order, each in its own transaction that also records its
version. Every run takes one transaction-scoped advisory lock first, so two nodes starting at
once apply each migration exactly once: the second waits, then sees it applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# An arbitrary constant of this project: the key of the advisory lock that serialises migrations.
MIGRATION_LOCK_KEY = 0x7265_6769_6F6E  # "region"
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_TABLE_PATTERN = re.compile(r"^[a-z_]{1,40}$")


class MigrationError(Exception):
    """The schema could not be brought to the version this code needs."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """A service's migrations: the files in ``directory``, recorded in ``table``."""

    directory: Path
    table: str = "schema_migrations"

    def __post_init__(self) -> None:
        if not _TABLE_PATTERN.match(self.table):
            raise MigrationError(f"not a table name: {self.table!r}")

    def load(self) -> list[Migration]:
        migrations = []
        for path in sorted(self.directory.iterdir()):
            match = _FILE_PATTERN.match(path.name)
            if match:
                migrations.append(Migration(int(match[1]), match[2], path.read_text()))
        versions = [m.version for m in migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise MigrationError(f"migration versions must run 1..N without gaps, got {versions}")
        return migrations

    async def apply(self, connection: asyncpg.Connection) -> list[int]:
        """Bring the schema up to date; return the versions this call applied."""
        migrations = self.load()
        applied_now = []
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin (both may pass the
        # check and one then fails on the catalog's unique index), so it runs under the lock.
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for migration in migrations:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                done = await connection.fetchval(
                    f"SELECT 1 FROM {self.table} WHERE version = $1", migration.version
                )
                if done:
                    continue
                await connection.execute(migration.sql)
                await connection.execute(
                    f"INSERT INTO {self.table} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                applied_now.append(migration.version)
        return applied_now

    async def is_current(self, connection: asyncpg.Connection) -> bool:
        """Readiness: every migration this code knows is applied."""
        expected = len(self.load())
        try:
            applied = await connection.fetchval(f"SELECT count(*) FROM {self.table}")
        except asyncpg.UndefinedTableError:
            return False
        return applied == expected

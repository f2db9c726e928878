"""Versioned schema migrations, applied at start.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own transaction that also
records its version. Every run takes one transaction-scoped advisory lock first, so two nodes
starting at once apply each migration exactly once: the second waits, then sees it applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ledger_node.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant of this project: the key of the advisory lock that serialises migrations.
MIGRATION_LOCK_KEY = 0x7265_6769_6F6E  # "region"
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.iterdir()):
        match = _FILE_PATTERN.match(path.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must run 1..N without gaps, got {versions}")
    return migrations


async def apply_migrations(connection: asyncpg.Connection) -> list[int]:
    """Bring the schema up to date; return the versions this call applied."""
    migrations = load_migrations()
    applied_now = []
    # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin (both may pass the
    # check and one then fails on the catalog's unique index), so it runs under the lock too.
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for migration in migrations:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            done = await connection.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.version)
    return applied_now


async def schema_is_current(connection: asyncpg.Connection) -> bool:
    """Readiness: every migration this code knows is applied."""
    expected = len(load_migrations())
    try:
        applied = await connection.fetchval("SELECT count(*) FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return False
    return applied == expected

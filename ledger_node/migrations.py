"""The ledger's schema migrations (``migrations/NNNN_name.sql``), applied at start by the
runner every service shares (runtime.migrations)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from runtime.migrations import Migration, MigrationSet

LEDGER_MIGRATIONS = MigrationSet(Path(__file__).parent / "migrations")


def load_migrations() -> list[Migration]:
    return LEDGER_MIGRATIONS.load()


async def apply_migrations(connection: asyncpg.Connection) -> list[int]:
    """Bring the ledger's schema up to date; return the versions this call applied."""
    return await LEDGER_MIGRATIONS.apply(connection)


async def schema_is_current(connection: asyncpg.Connection) -> bool:
    return await LEDGER_MIGRATIONS.is_current(connection)

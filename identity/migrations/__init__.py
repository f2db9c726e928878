"""Identity's schema migrations (``NNNN_name.sql``), recorded apart from the ledger's."""

from pathlib import Path

from runtime.migrations import MigrationSet

IDENTITY_MIGRATIONS = MigrationSet(Path(__file__).parent, "identity_schema_migrations")

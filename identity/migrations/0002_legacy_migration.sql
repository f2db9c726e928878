-- The legacy user migration (identity/legacy/): each migrated player keeps the legacy id it came
-- from (unique: no legacy user twice), and each region records how far a run's loads have come
-- in the same transaction as each chunk it loads (resume after any crash, without gaps).
ALTER TABLE identity.players ADD COLUMN legacy_run text, ADD COLUMN legacy_id text;
CREATE UNIQUE INDEX players_legacy ON identity.players (legacy_run, legacy_id)
    WHERE legacy_id IS NOT NULL;

CREATE TABLE identity.migration_checkpoints (
    run        text NOT NULL,
    phase      text NOT NULL CHECK (phase IN ('claims', 'ids', 'players')),
    last_key   text NOT NULL,
    rows       bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run, phase)
);

-- A name the run decided for a legacy user that a live player claimed first (after the
-- decision): the user gets a generated name in the run's last pass.
CREATE TABLE identity.migration_conflicts (
    run       text NOT NULL,
    legacy_id text NOT NULL,
    skeleton  text NOT NULL,
    PRIMARY KEY (run, legacy_id)
);

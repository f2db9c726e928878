"""The migration's SQL: its work schema (on the work database, one run a row), and the
set-based decision that turns the staged rows into one decision per legacy user.

The decision, in one transaction (identity.legacy.migrate runs it):

1. one row per legacy id: duplicates keep the row that sorts first by content (date, name,
   region), so a shuffled export decides alike;
2. among valid names, per skeleton, the oldest account wins (then the smallest legacy id),
   unless a live player has that skeleton (then every row of it loses to the live player);
3. every other row gets a name from its own: a loser its name with a number (``bob2``), a
   repairable invalid name its repaired form (then numbered if that is taken), and anything
   else its generated name; numbers are given by rank within the name, in rounds that skip
   what is taken, and a name the rules cannot fit is generated instead.
"""

from __future__ import annotations

WORK_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS migration;
CREATE TABLE IF NOT EXISTS migration.runs (
    run           text PRIMARY KEY,
    staged_lines  bigint NOT NULL DEFAULT 0,
    staged_rows   bigint NOT NULL DEFAULT 0,
    malformed_rows bigint NOT NULL DEFAULT 0,
    staging_done  boolean NOT NULL DEFAULT false,
    decided       boolean NOT NULL DEFAULT false,
    conflicts_done boolean NOT NULL DEFAULT false,
    finished      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNLOGGED TABLE IF NOT EXISTS migration.staged (
    run text NOT NULL, line bigint NOT NULL, legacy_id text NOT NULL, raw_username text,
    canonical text, skeleton text, rule text, repaired text, repaired_skeleton text,
    generated text NOT NULL, generated_skeleton text NOT NULL, player_id text NOT NULL,
    created_at timestamptz, date_broken boolean NOT NULL, home_region text NOT NULL,
    slot integer, id_slot integer NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS migration.malformed (
    run text NOT NULL, line bigint NOT NULL, legacy_id text, reason text NOT NULL
);
CREATE UNLOGGED TABLE IF NOT EXISTS migration.live (
    run text NOT NULL, skeleton text NOT NULL, PRIMARY KEY (run, skeleton)
);
CREATE TABLE IF NOT EXISTS migration.slots (
    run text NOT NULL, slot integer NOT NULL, region text NOT NULL, PRIMARY KEY (run, slot)
);
CREATE TABLE IF NOT EXISTS migration.decisions (
    run text NOT NULL, legacy_id text NOT NULL, line bigint NOT NULL,
    player_id text NOT NULL, home_region text NOT NULL,
    username text NOT NULL, skeleton text NOT NULL, slot integer NOT NULL,
    owner_region text NOT NULL, id_owner_region text NOT NULL,
    outcome text NOT NULL, rule text, generated boolean NOT NULL,
    raw_username text, created_at timestamptz, date_broken boolean NOT NULL,
    spare text NOT NULL, spare_skeleton text NOT NULL,
    claim_id text NOT NULL, deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run, legacy_id)
);
CREATE TABLE IF NOT EXISTS migration.changes (
    run text NOT NULL, seq bigint NOT NULL, op text NOT NULL, legacy_id text,
    outcome text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run, seq)
);
CREATE INDEX IF NOT EXISTS decisions_owner ON migration.decisions (run, owner_region, legacy_id);
CREATE INDEX IF NOT EXISTS decisions_home ON migration.decisions (run, home_region, legacy_id);
CREATE INDEX IF NOT EXISTS decisions_id_owner
    ON migration.decisions (run, id_owner_region, legacy_id);
CREATE OR REPLACE FUNCTION migration.slot(key text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (('x' || substr(encode(sha256(convert_to(key, 'UTF8')), 'hex'), 1, 8))
                  ::bit(32)::integer & 1023) $$;
"""
"""``migration.slot`` is wire.ids.identity_slot in SQL (the low 10 bits of the first 4 bytes of
the key's SHA-256); a test holds the two to each other."""

FIRSTS = """
CREATE TEMP TABLE firsts ON COMMIT DROP AS
SELECT DISTINCT ON (legacy_id) *
FROM migration.staged WHERE run = $1
ORDER BY legacy_id, created_at NULLS LAST, raw_username NULLS LAST, home_region, line
"""

RANKED = """
CREATE TEMP TABLE ranked ON COMMIT DROP AS
SELECT f.*,
       CASE WHEN f.rule IS NULL THEN row_number() OVER (
           PARTITION BY f.rule IS NULL, f.skeleton
           ORDER BY f.created_at NULLS LAST, f.legacy_id) END AS rank,
       f.rule IS NULL AND EXISTS (
           SELECT 1 FROM migration.live l WHERE l.run = f.run AND l.skeleton = f.skeleton
       ) AS live_taken
FROM firsts f
"""

OUTCOMES = """
CREATE TEMP TABLE outcomes ON COMMIT DROP AS
SELECT r.*,
       CASE
         WHEN r.rule IS NULL AND r.live_taken THEN 'lost-to-live'
         WHEN r.rule IS NULL AND r.rank = 1 AND r.canonical = r.raw_username THEN 'kept'
         WHEN r.rule IS NULL AND r.rank = 1 THEN 'normalised'
         WHEN r.rule IS NULL THEN 'lost-to-older'
         WHEN r.rule = 'reserved' THEN 'reserved'
         WHEN r.rule = 'empty' THEN 'missing'
         WHEN r.repaired IS NOT NULL THEN 'invalid-repaired'
         ELSE 'invalid-generated'
       END AS outcome
FROM ranked r
"""

TAKEN = """
CREATE TEMP TABLE taken (skeleton text PRIMARY KEY) ON COMMIT DROP;
INSERT INTO taken SELECT skeleton FROM outcomes WHERE outcome IN ('kept', 'normalised');
INSERT INTO taken SELECT skeleton FROM migration.live WHERE run = $1 ON CONFLICT DO NOTHING;
"""

PENDING = """
CREATE TEMP TABLE pending ON COMMIT DROP AS
SELECT legacy_id, created_at, base, base_skeleton, generated, generated_skeleton,
       first_k + row_number() OVER (
           PARTITION BY base_skeleton ORDER BY created_at NULLS LAST, legacy_id) - 1 AS k,
       count(*) OVER (PARTITION BY base_skeleton) AS group_size,
       NULL::text AS final, NULL::text AS final_skeleton, NULL::integer AS final_slot
FROM (
    SELECT legacy_id, created_at, canonical AS base, skeleton AS base_skeleton, 2 AS first_k,
           generated, generated_skeleton
    FROM outcomes WHERE outcome IN ('lost-to-older', 'lost-to-live')
    UNION ALL
    SELECT legacy_id, created_at, repaired, repaired_skeleton, 1, generated, generated_skeleton
    FROM outcomes WHERE outcome = 'invalid-repaired'
    UNION ALL
    SELECT legacy_id, created_at, generated, generated_skeleton, 1, generated,
           generated_skeleton
    FROM outcomes WHERE outcome IN ('reserved', 'missing', 'invalid-generated')
) AS needing;
CREATE INDEX ON pending (legacy_id);
"""

ROUND = """
WITH candidates AS (
    SELECT legacy_id,
           CASE WHEN k = 1 THEN base ELSE base || k END AS name,
           CASE WHEN k = 1 THEN base_skeleton
                ELSE base_skeleton || translate(k::text, '0123456789', $2) END AS skeleton
    FROM pending
    WHERE final IS NULL AND length(base) + CASE WHEN k = 1 THEN 0 ELSE length(k::text) END <= $1
), free AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.skeleton ORDER BY c.legacy_id) AS rn
    FROM candidates c
    WHERE NOT EXISTS (SELECT 1 FROM taken t WHERE t.skeleton = c.skeleton)
      AND c.skeleton <> ALL($3::text[])
), chosen AS (
    UPDATE pending p
    SET final = f.name, final_skeleton = f.skeleton, final_slot = migration.slot(f.skeleton)
    FROM free f WHERE p.legacy_id = f.legacy_id AND f.rn = 1
    RETURNING f.skeleton
)
INSERT INTO taken SELECT skeleton FROM chosen
"""
"""One round: every undecided row tries its current number; the first by legacy id of each
free skeleton takes it. $1 the longest name, $2 the digits' skeletons, $3 reserved skeletons."""

NEXT_ROUND = """
UPDATE pending SET k = k + group_size WHERE final IS NULL;
UPDATE pending SET base = generated, base_skeleton = generated_skeleton, k = 1, group_size = 1
WHERE final IS NULL AND base <> generated AND length(base) + length(k::text) > $1
"""
"""The next number past the group's; a name too long to take one is generated instead."""

GIVE_UP_NUMBERS = """
UPDATE pending SET base = generated, base_skeleton = generated_skeleton, k = 1, group_size = 1
WHERE final IS NULL AND base <> generated
"""

DECIDE = """
INSERT INTO migration.decisions (
    run, legacy_id, line, player_id, home_region, username, skeleton, slot, owner_region,
    id_owner_region, outcome, rule, generated, raw_username, created_at, date_broken, spare,
    spare_skeleton, claim_id)
SELECT o.run, o.legacy_id, o.line, o.player_id, o.home_region,
       coalesce(p.final, o.canonical), coalesce(p.final_skeleton, o.skeleton),
       coalesce(p.final_slot, o.slot), ($1::text[])[coalesce(p.final_slot, o.slot) + 1],
       ($1::text[])[o.id_slot + 1], o.outcome, o.rule, o.outcome NOT IN ('kept', 'normalised'),
       o.raw_username, o.created_at, o.date_broken, o.generated, o.generated_skeleton,
       'mg:' || o.run || ':' || o.legacy_id
FROM outcomes o
LEFT JOIN pending p ON p.legacy_id = o.legacy_id
"""
"""Every pending row has a final name by then: the last rounds number generated names, which
are 16 characters and can always take a number."""

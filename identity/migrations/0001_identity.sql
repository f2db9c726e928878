-- Identity's tables, in a schema of their own beside the ledger's (docs/architecture.md,
-- "Identity"). A region plays two parts: the home of its players (players, claim_sagas,
-- username_history, events) and the owner of its identity slots (claims, public_ids).
CREATE SCHEMA IF NOT EXISTS identity;

-- Home: a player lives in its home region, beside its wallet accounts.
CREATE TABLE identity.players (
    id                 text PRIMARY KEY,
    status             text NOT NULL CHECK (status IN ('creating', 'active', 'refused')),
    username           text,
    skeleton           text,
    claim_id           text,
    owner_region       text,
    username_generated boolean NOT NULL DEFAULT false,
    username_refusal   text,  -- why the preferred name was not used (a rule, username-taken)
    display_name       text,
    operator           text,
    currencies         text[] NOT NULL DEFAULT '{}',
    version            bigint NOT NULL DEFAULT 0,
    creation_key       text UNIQUE,
    request_hash       bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- An active player has exactly one current username, with the claim that made it its own.
    CHECK (status <> 'active' OR (username IS NOT NULL AND skeleton IS NOT NULL
                                  AND claim_id IS NOT NULL AND owner_region IS NOT NULL))
);

CREATE TABLE identity.player_accounts (
    player_id  text NOT NULL REFERENCES identity.players (id),
    currency   text NOT NULL,
    account_id text NOT NULL UNIQUE,
    PRIMARY KEY (player_id, currency)
);

-- Home: the claim sagas (reserve at the owner, bind here, confirm at the owner, then record a
-- new player's public id at the owner of its slot, or hold a renamed player's previous name at
-- its owner). The row is the saga's durable state.
CREATE TABLE identity.claim_sagas (
    id                  text PRIMARY KEY,
    root_id             text NOT NULL,  -- a refused or cancelled claim goes on as a new one
    player_id           text NOT NULL REFERENCES identity.players (id),
    kind                text NOT NULL CHECK (kind IN ('create', 'rename')),
    username            text NOT NULL,
    skeleton            text NOT NULL,
    owner_region        text NOT NULL,
    generated           boolean NOT NULL,
    fallback            boolean NOT NULL,
    refusal             text,
    request_key         text UNIQUE,  -- the client's idempotency key, on a chain's first
    request_hash        bytea,
    previous_claim_id   text,
    previous_owner      text,
    held_until          timestamptz,
    status              text NOT NULL CHECK (status IN
                        ('reserving', 'confirming', 'registering', 'holding', 'completed',
                         'refused', 'cancelled')),
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
-- One claim in flight per player: a rename waits for the previous claim to end.
CREATE UNIQUE INDEX claim_sagas_one_open ON identity.claim_sagas (player_id)
    WHERE status IN ('reserving', 'confirming', 'registering', 'holding');
CREATE INDEX claim_sagas_due ON identity.claim_sagas (next_attempt_at)
    WHERE status IN ('reserving', 'confirming', 'registering', 'holding');
-- A player's claims: its creation's answer, its renames in the rate window.
CREATE INDEX claim_sagas_player ON identity.claim_sagas (player_id, created_at);
CREATE INDEX claim_sagas_chain ON identity.claim_sagas (root_id, created_at);

-- Home: every name a player has had, current (until IS NULL) and past.
CREATE TABLE identity.username_history (
    player_id    text NOT NULL REFERENCES identity.players (id),
    claim_id     text PRIMARY KEY,
    username     text NOT NULL,
    skeleton     text NOT NULL,
    owner_region text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    until        timestamptz,
    held_until   timestamptz
);
CREATE INDEX username_history_player ON identity.username_history (player_id, since);

-- Home: facts others need (player created, username changed), written in the transaction that
-- makes them true, for the event outbox to publish.
CREATE TABLE identity.events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    aggregate_id text NOT NULL,
    version      bigint NOT NULL,
    body         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_id, version)
);

-- Owner: the claims of the slots this region owns. The primary key on the skeleton is what
-- makes look-alike names unique: two claims of one skeleton cannot both exist.
CREATE TABLE identity.claims (
    skeleton     text PRIMARY KEY,
    username     text NOT NULL,
    slot         integer NOT NULL,
    claim_id     text NOT NULL UNIQUE,
    player_id    text NOT NULL,
    home_region  text NOT NULL,
    state        text NOT NULL CHECK (state IN ('reserved', 'live', 'held')),
    lease_until  timestamptz,
    held_until   timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'reserved' OR lease_until IS NOT NULL),
    CHECK (state <> 'held' OR held_until IS NOT NULL)
);
CREATE INDEX claims_reserved ON identity.claims (lease_until) WHERE state = 'reserved';
CREATE INDEX claims_held ON identity.claims (held_until) WHERE state = 'held';
CREATE INDEX claims_player ON identity.claims (player_id);

-- Owner: the public ids of the slots this region owns, and where each player lives. Never
-- deleted, so an id is never reused.
CREATE TABLE identity.public_ids (
    player_id   text PRIMARY KEY,
    home_region text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

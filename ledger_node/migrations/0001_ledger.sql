-- The regional ledger: currencies, accounts with derived balances, the append-only transfer
-- history, idempotency keys and bet references. Balances are derived state kept in the same
-- transaction as the transfers that change them; CHECK constraints are the last line of
-- defence behind the batch engine's own checks (assertions in pairs).

CREATE TABLE currencies (
    code     text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9]{2,7}$'),
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 18)
);

CREATE TABLE accounts (
    id              text PRIMARY KEY,
    region          text NOT NULL,
    currency        text NOT NULL REFERENCES currencies (code),
    kind            text NOT NULL CHECK (kind IN ('player', 'house', 'clearing', 'transit')),
    peer_region     text,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
    debits_posted   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    version         bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    idempotency_key text UNIQUE,
    request_hash    bytea,
    metadata        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- No overdraft for player accounts, whatever the application does.
    CONSTRAINT player_no_overdraft CHECK (
        kind <> 'player' OR credits_posted - debits_posted - debits_pending >= 0
    ),
    CONSTRAINT transit_has_peer CHECK ((kind = 'transit') = (peer_region IS NOT NULL))
);

CREATE TABLE transfers (
    -- History order and cursors; an identity is unique without an index of its own.
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    id                  text PRIMARY KEY,
    -- What the caller asked for: a plain transfer or a game operation.
    kind                text NOT NULL CHECK (kind IN ('transfer', 'bet', 'win', 'rollback')),
    -- How the row moves money: 'single' posts at once, 'pending' holds, and 'post', 'void' and
    -- 'expire' resolve the pending transfer named by pending_id.
    flow                text NOT NULL CHECK (flow IN ('single', 'pending', 'post', 'void', 'expire')),
    status              text NOT NULL CHECK (status IN ('posted', 'pending', 'voided', 'expired')),
    pending_id          text REFERENCES transfers (id),
    debit_account_id    text NOT NULL REFERENCES accounts (id),
    credit_account_id   text NOT NULL REFERENCES accounts (id),
    amount              bigint NOT NULL CHECK (amount >= 0),
    -- No foreign key here: the engine requires it to equal both accounts' currency, and those
    -- reference currencies (each check costs a lookup per row on the hot path).
    currency            text NOT NULL,
    -- For a pending row once resolved: how much of it was posted (0 when voided or expired).
    resolved_amount     bigint CHECK (resolved_amount >= 0 AND resolved_amount <= amount),
    timeout_at          timestamptz,
    reference           text,
    round_id            text,
    metadata            jsonb,
    created_at          timestamptz NOT NULL,
    -- Both accounts' balances right after this row: history and balance-as-of read them back.
    debit_posted_after           bigint NOT NULL,
    debit_debits_pending_after   bigint NOT NULL,
    debit_credits_pending_after  bigint NOT NULL,
    debit_version_after          bigint NOT NULL,
    credit_posted_after          bigint NOT NULL,
    credit_debits_pending_after  bigint NOT NULL,
    credit_credits_pending_after bigint NOT NULL,
    credit_version_after         bigint NOT NULL,
    CONSTRAINT accounts_differ CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT resolution_names_pending CHECK ((flow IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)),
    CONSTRAINT positive_unless_resolution CHECK (amount > 0 OR flow IN ('post', 'void', 'expire'))
);

CREATE INDEX transfers_debit_history ON transfers (debit_account_id, seq DESC);
CREATE INDEX transfers_credit_history ON transfers (credit_account_id, seq DESC);
CREATE INDEX transfers_pending_timeout ON transfers (timeout_at) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    operation    text NOT NULL,
    result       text NOT NULL,
    transfer_id  text,
    status_code  smallint NOT NULL,
    body         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per (player account, bet reference). A rollback that finds no bet leaves a tombstone
-- (status 'tombstone') so that the late bet is refused.
CREATE TABLE bets (
    account_id           text NOT NULL REFERENCES accounts (id),
    reference            text NOT NULL,
    status               text NOT NULL CHECK (status IN ('placed', 'rolled_back', 'tombstone')),
    bet_transfer_id      text REFERENCES transfers (id),
    rollback_transfer_id text REFERENCES transfers (id),
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (account_id, reference),
    CONSTRAINT tombstone_has_no_bet CHECK ((status = 'tombstone') = (bet_transfer_id IS NULL))
);

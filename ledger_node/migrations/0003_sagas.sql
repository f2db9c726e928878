-- Cross-region transfers (DESIGN.md, "Cross-region transfer saga"). The debit side's region
-- keeps the saga row (the orchestrator's state); the credit side's region keeps one row per
-- step id it has seen, applied or cancelled (the participant's state). Both are written by the
-- batch engine in the same transaction as the money they describe.

ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
-- 'saga' rows are the hold at the source, its post or void, and the credit at the destination.
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('transfer', 'bet', 'win', 'rollback', 'saga'));

CREATE TABLE sagas (
    id                 text PRIMARY KEY,
    -- held: step 1 done, the saga is running; completed: the hold was posted after the
    -- destination applied step 2; compensated: the hold was voided, nothing moved anywhere.
    status             text NOT NULL CHECK (status IN ('held', 'completed', 'compensated')),
    debit_account_id   text NOT NULL REFERENCES accounts (id),
    credit_account_id  text NOT NULL,
    credit_region      text NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    currency           text NOT NULL,
    hold_transfer_id   text NOT NULL UNIQUE REFERENCES transfers (id),
    finish_transfer_id text UNIQUE REFERENCES transfers (id),
    -- The destination's transfer id, once it said step 2 applied.
    credit_transfer_id text,
    -- Why a saga was compensated: the destination's problem type, or the deadline.
    reason             text,
    reference          text,
    metadata           jsonb,
    attempts           integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error         text,
    deadline_at        timestamptz NOT NULL,
    next_attempt_at    timestamptz NOT NULL,
    -- Only one node drives a saga at a time: the one whose lease has not run out.
    lease_owner        text,
    lease_until        timestamptz,
    created_at         timestamptz NOT NULL,
    finished_at        timestamptz,
    CONSTRAINT finished_names_resolution CHECK (
        (status = 'held') = (finish_transfer_id IS NULL)
        AND (status = 'held') = (finished_at IS NULL)
    ),
    CONSTRAINT completed_names_credit CHECK (status <> 'completed' OR credit_transfer_id IS NOT NULL)
);

CREATE INDEX sagas_unfinished ON sagas (next_attempt_at) WHERE status = 'held';

CREATE TABLE saga_steps (
    step_id       text PRIMARY KEY,
    saga_id       text NOT NULL,
    origin_region text NOT NULL,
    -- applied: step 2 credited the account; refused: step 2 was refused (account closed,
    -- currency mismatch...), for ever; cancelled: the orchestrator gave up first, so a late
    -- step 2 with this id is refused for ever (the tombstone).
    status        text NOT NULL CHECK (status IN ('applied', 'refused', 'cancelled')),
    transfer_id   text UNIQUE REFERENCES transfers (id),
    amount        bigint NOT NULL CHECK (amount > 0),
    -- For a refused step, the destination's result code (account_closed, currency_mismatch...).
    reason        text,
    created_at    timestamptz NOT NULL,
    CONSTRAINT applied_names_transfer CHECK ((status = 'applied') = (transfer_id IS NOT NULL))
);

-- The transactional outbox (docs/events.md, decision 0013): every committed change others care
-- about writes one row here in the transaction that makes it, inside the batch's one statement.
-- A row is small: what happened (family, type), to which aggregate and at which version, and
-- the row it happened to (ref); the relay reads the body from that row (transfers and sagas
-- are immutable in what an event says of them) or from body, where the change left no row.
--
-- seq comes from an uncached sequence, so of two transactions that touch one aggregate (the
-- later waits for the earlier's row lock before it writes) the later has the larger seq; xid
-- is the writing transaction's id, which the relay compares with its snapshots so that a
-- transaction committing after a later-numbered one is never skipped.
CREATE TABLE outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    family       text NOT NULL CHECK (family IN ('transfer', 'saga', 'account', 'webhook')),
    type         text NOT NULL,
    ref          text NOT NULL,
    aggregate_id text NOT NULL,
    version      bigint NOT NULL,
    body         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_xid ON outbox (xid);

-- Where the region's relay is: the snapshot up to which every event is published (prev), the
-- one it is publishing up to (cur), how far into that batch it has come per source table, and
-- the newest created_at its cleanup has deleted (the audit checks every transfer after it).
CREATE TABLE outbox_relay (
    name            text PRIMARY KEY,
    prev            pg_snapshot,
    cur             pg_snapshot,
    after           jsonb NOT NULL DEFAULT '{}',
    published       bigint NOT NULL DEFAULT 0,
    cleaned_through timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- From now on every transfer has its event: the audit checks those after started_at.
INSERT INTO outbox_relay (name) VALUES ('relay');

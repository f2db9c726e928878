-- Identity's events join the region's relay (docs/events.md): the same ordering columns as the
-- ledger's outbox (migration 0008 of the ledger), so one snapshot batch publishes both.
ALTER TABLE identity.events
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY (CACHE 1),
    ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE UNIQUE INDEX events_seq ON identity.events (seq);
CREATE INDEX events_xid ON identity.events (xid);

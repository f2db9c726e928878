-- Each region's view of every region's players, its own included, kept from their player events
-- (ledger_node.player_views): lookups by username that need no WAN hop where a moment's
-- staleness is allowed (docs/events.md). A row moves only to a higher version.
CREATE TABLE identity.player_views (
    player_id    text PRIMARY KEY,
    home_region  text NOT NULL,
    username     text,
    skeleton     text,
    display_name text,
    status       text NOT NULL CHECK (status IN ('active', 'closed')),
    version      bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX player_views_skeleton ON identity.player_views (skeleton) WHERE status = 'active';

-- Operators' webhook endpoints and the deliveries owed to them (events.webhooks, docs/events.md).
-- A delivery is made once per endpoint and event (the unique key); order_keys are the accounts
-- (or the player) it concerns: a delivery waits while an earlier pending one shares a key.
CREATE TABLE webhook_endpoints (
    id              text PRIMARY KEY,
    url             text NOT NULL CHECK (url LIKE 'https://%' AND length(url) <= 2048),
    event_types     text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 64),
    -- The current secret first; during a rotation also the previous one (both sign).
    secrets         text[] NOT NULL CHECK (cardinality(secrets) BETWEEN 1 AND 2),
    status          text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    failing_since   timestamptz,
    disabled_reason text,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id),
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    order_keys      text[] NOT NULL,
    payload         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, seq)
    WHERE status = 'pending';

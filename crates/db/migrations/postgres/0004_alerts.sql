-- Operator alerts: what needs a person (an instance that would not end, …). Delivery (Slack,
-- webhooks, e-mail) comes later; until then the rows and the log line are the alert.
CREATE TABLE alerts (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL,
    subject    text NOT NULL,
    message    text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX alerts_created ON alerts (created_at);

-- Leases on periodic work, so one replica at a time does it (e.g. the orphan sweep).
CREATE TABLE maintenance_leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    lease_until timestamptz NOT NULL
);

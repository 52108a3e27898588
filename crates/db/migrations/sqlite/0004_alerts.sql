-- Operator alerts: what needs a person (an instance that would not end, …). Delivery (Slack,
-- webhooks, e-mail) comes later; until then the rows and the log line are the alert.
CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX alerts_created ON alerts (created_at);

-- Leases on periodic work, so one replica at a time does it (e.g. the orphan sweep).
CREATE TABLE maintenance_leases (
    name        TEXT PRIMARY KEY NOT NULL,
    holder      TEXT NOT NULL,
    lease_until TEXT NOT NULL
);

-- Alerts grow dedup and delivery (issue 11). An occurrence of the same (kind, subject) within the
-- cooldown of the open alert's first sighting bumps `count`/`last_seen` instead of adding a row;
-- an acknowledged alert is closed, so the next occurrence is a new row (delivered again).
ALTER TABLE alerts ADD COLUMN first_seen TEXT;
ALTER TABLE alerts ADD COLUMN last_seen TEXT;
ALTER TABLE alerts ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE alerts ADD COLUMN acknowledged_at TEXT;
ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
UPDATE alerts SET first_seen = created_at, last_seen = created_at;
CREATE INDEX alerts_open ON alerts (kind, subject, id) WHERE acknowledged_at IS NULL;

-- One row per (alert, channel) once the deliverer has tried it: `slack`, `webhook`, `email`.
-- `delivered_at` or `gave_up_at` set = done; otherwise retried at `next_attempt_at`.
CREATE TABLE alert_deliveries (
    alert_id        INTEGER NOT NULL REFERENCES alerts (id),
    channel         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT,
    delivered_at    TEXT,
    gave_up_at      TEXT,
    PRIMARY KEY (alert_id, channel)
);

-- Creators' e-mails when their LoRA finishes: the owner's choice (NULL = on, the default) and one
-- row per LoRA mailed (or skipped), so each LoRA is mailed once, across crashes too.
ALTER TABLE users ADD COLUMN email_on_finish INTEGER;
CREATE TABLE lora_finish_mails (
    lora_id   TEXT PRIMARY KEY NOT NULL REFERENCES lora_models (id),
    status    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT,
    at        TEXT NOT NULL
);

-- The monthly archival review: an admin's approval of archiving a LoRA not used for months. Only
-- recorded; nothing is moved or deleted.
CREATE TABLE archival_approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lora_id     TEXT NOT NULL REFERENCES lora_models (id),
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL
);
CREATE INDEX archival_approvals_lora ON archival_approvals (lora_id);

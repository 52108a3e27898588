-- Alerts grow dedup and delivery (issue 11). An occurrence of the same (kind, subject) within the
-- cooldown of the open alert's first sighting bumps `count`/`last_seen` instead of adding a row;
-- an acknowledged alert is closed, so the next occurrence is a new row (delivered again).
ALTER TABLE alerts ADD COLUMN first_seen timestamptz;
ALTER TABLE alerts ADD COLUMN last_seen timestamptz;
ALTER TABLE alerts ADD COLUMN count bigint NOT NULL DEFAULT 1;
ALTER TABLE alerts ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE alerts ADD COLUMN acknowledged_by text;
UPDATE alerts SET first_seen = created_at, last_seen = created_at;
CREATE INDEX alerts_open ON alerts (kind, subject, id) WHERE acknowledged_at IS NULL;

-- One row per (alert, channel) once the deliverer has tried it: `slack`, `webhook`, `email`.
-- `delivered_at` or `gave_up_at` set = done; otherwise retried at `next_attempt_at`.
CREATE TABLE alert_deliveries (
    alert_id        bigint NOT NULL REFERENCES alerts (id),
    channel         text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    PRIMARY KEY (alert_id, channel)
);

-- Creators' e-mails when their LoRA finishes: the owner's choice (NULL = on, the default) and one
-- row per LoRA mailed (or skipped), so each LoRA is mailed once, across crashes too.
ALTER TABLE users ADD COLUMN email_on_finish boolean;
CREATE TABLE lora_finish_mails (
    lora_id   uuid PRIMARY KEY REFERENCES lora_models (id),
    status    text NOT NULL,
    outcome   text NOT NULL,
    detail    text,
    at        timestamptz NOT NULL
);

-- The monthly archival review: an admin's approval of archiving a LoRA not used for months. Only
-- recorded; nothing is moved or deleted.
CREATE TABLE archival_approvals (
    id          bigserial PRIMARY KEY,
    lora_id     uuid NOT NULL REFERENCES lora_models (id),
    approved_by text NOT NULL,
    approved_at timestamptz NOT NULL
);
CREATE INDEX archival_approvals_lora ON archival_approvals (lora_id);

-- Client webhooks (Replicate-style). A LoRA created with a `webhook` has one row here, written in
-- the create's transaction. `event_cursor` is the last `lora_events` id of this LoRA already
-- turned into deliveries (the outbox cursor: moved in the same transaction as the deliveries are
-- inserted). Events of one LoRA are appended in id order under its row's lock, so a per-LoRA
-- cursor never skips an event that commits late.
CREATE TABLE lora_webhooks (
    lora_id          TEXT PRIMARY KEY NOT NULL REFERENCES lora_models (id),
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,
    event_cursor     INTEGER NOT NULL DEFAULT 0,
    last_progress_at TEXT,
    created_at       TEXT NOT NULL
);

-- Each user's signing secret (`whsec_<base64>`), made on first use.
CREATE TABLE webhook_secrets (
    user_id    TEXT PRIMARY KEY NOT NULL,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- One message per selected event; the same id on every attempt (Standard Webhooks `webhook-id`).
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    lora_id         TEXT NOT NULL REFERENCES lora_models (id),
    event_id        INTEGER NOT NULL,
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_holder    TEXT,
    lease_until     TEXT,
    created_at      TEXT NOT NULL,
    finished_at     TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_lora ON webhook_deliveries (lora_id, event_id);

-- Every attempt, kept: when, the answer's status or the error, how long it took.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

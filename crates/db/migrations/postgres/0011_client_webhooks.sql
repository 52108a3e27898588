-- Client webhooks (Replicate-style). A LoRA created with a `webhook` has one row here, written in
-- the create's transaction. `event_cursor` is the last `lora_events` id of this LoRA already
-- turned into deliveries (the outbox cursor: moved in the same transaction as the deliveries are
-- inserted). Events of one LoRA are appended in id order under its row's lock, so a per-LoRA
-- cursor never skips an event that commits late.
CREATE TABLE lora_webhooks (
    lora_id          uuid PRIMARY KEY REFERENCES lora_models (id),
    url              text NOT NULL,
    events           text NOT NULL,
    event_cursor     bigint NOT NULL DEFAULT 0,
    last_progress_at timestamptz,
    created_at       timestamptz NOT NULL
);

-- Each user's signing secret (`whsec_<base64>`), made on first use.
CREATE TABLE webhook_secrets (
    user_id    uuid PRIMARY KEY,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL
);

-- One message per selected event; the same id on every attempt (Standard Webhooks `webhook-id`).
CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    lora_id         uuid NOT NULL REFERENCES lora_models (id),
    event_id        bigint NOT NULL,
    event           text NOT NULL,
    url             text NOT NULL,
    body            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_holder    text,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_lora ON webhook_deliveries (lora_id, event_id);

-- Every attempt, kept: when, the answer's status or the error, how long it took.
CREATE TABLE webhook_attempts (
    delivery_id text NOT NULL REFERENCES webhook_deliveries (id),
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL,
    status_code integer,
    error       text,
    duration_ms bigint NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

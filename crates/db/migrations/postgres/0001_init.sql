-- loraforge schema for Postgres (PRD 1, adapted: users come from JWT subjects, no auth schema).

CREATE TABLE users (
    id         uuid PRIMARY KEY,
    -- The latest email seen in the user's token, for "by user@example.com".
    email      text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE datasets (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL
);

CREATE TABLE dataset_images (
    dataset_id   uuid NOT NULL REFERENCES datasets (id),
    idx          integer NOT NULL CHECK (idx >= 0),
    file_name    text NOT NULL,
    format       text NOT NULL CHECK (format IN ('jpeg', 'png', 'webp')),
    width        integer NOT NULL,
    height       integer NOT NULL,
    bytes        bigint NOT NULL,
    content_hash text NOT NULL,
    storage_key  text NOT NULL,
    caption      text,
    PRIMARY KEY (dataset_id, idx)
);

CREATE TABLE lora_models (
    id                    uuid PRIMARY KEY,
    user_id               uuid NOT NULL REFERENCES users (id),
    name                  text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    description           text,
    dataset_id            uuid NOT NULL REFERENCES datasets (id),
    params                jsonb NOT NULL,
    training_status       text NOT NULL DEFAULT 'pending' CHECK (training_status IN
                              ('pending', 'queued', 'training', 'validating', 'completed', 'failed', 'cancelled')),
    stage                 text,
    progress              integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    estimated_remaining   integer CHECK (estimated_remaining >= 0),
    error                 text,
    usage_count           bigint NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    storage_key           text,
    file_size             bigint CHECK (file_size >= 0),
    validation_image_keys jsonb NOT NULL DEFAULT '[]',
    validation_passed     boolean,
    training_cost         double precision NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    completed_at          timestamptz,
    -- Word-prefix search over name and description ('simple': no stemming, no stop words).
    search                tsvector GENERATED ALWAYS AS
                              (to_tsvector('simple'::regconfig, name || ' ' || coalesce(description, ''))) STORED
);

-- A name is unique per user, exactly (names arrive trimmed).
CREATE UNIQUE INDEX lora_models_user_name_key ON lora_models (user_id, name);
-- Monthly counts, "my LoRAs", active-job counts per user.
CREATE INDEX lora_models_user_status_created ON lora_models (user_id, training_status, created_at);
-- Library sorts, unfiltered and filtered by status; the queue scan (queued, oldest first).
CREATE INDEX lora_models_popular ON lora_models (usage_count DESC, created_at DESC, id DESC);
CREATE INDEX lora_models_recent ON lora_models (created_at DESC, id DESC);
CREATE INDEX lora_models_name ON lora_models ((lower(name)) COLLATE "C", created_at DESC, id DESC);
CREATE INDEX lora_models_status_popular ON lora_models (training_status, usage_count DESC, created_at DESC, id DESC);
CREATE INDEX lora_models_status_recent ON lora_models (training_status, created_at DESC, id DESC);
-- fastupdate off: with a pending list every search scans it linearly until the next vacuum
-- (measured: ~1.5 ms even for a word that matches nothing after a 100k-row import).
CREATE INDEX lora_models_search ON lora_models USING gin (search) WITH (fastupdate = off);

-- One row per LoRA. The LoRA's training_status is the only status; this holds the run's lease.
CREATE TABLE training_jobs (
    lora_id      uuid PRIMARY KEY REFERENCES lora_models (id),
    attempt      integer NOT NULL DEFAULT 0,
    worker       text,
    lease_until  timestamptz,
    heartbeat_at timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    created_at   timestamptz NOT NULL
);

CREATE TABLE lora_events (
    id      bigserial PRIMARY KEY,
    lora_id uuid NOT NULL REFERENCES lora_models (id),
    kind    text NOT NULL CHECK (kind IN ('created', 'status', 'progress', 'updated')),
    status  text NOT NULL,
    data    jsonb NOT NULL,
    at      timestamptz NOT NULL
);
CREATE INDEX lora_events_lora_id ON lora_events (lora_id, id);

CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    lora_id      uuid NOT NULL REFERENCES lora_models (id),
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- Per-user settings, and the row create_lora and claim_next_job lock (FOR UPDATE) per user.
CREATE TABLE user_training_limits (
    user_id       uuid PRIMARY KEY,
    -- NULL: the service-wide default applies.
    monthly_limit integer CHECK (monthly_limit >= 0),
    updated_at    timestamptz NOT NULL
);

-- PRD 2 cost tracking (filled later).
CREATE TABLE job_costs (
    id         bigserial PRIMARY KEY,
    lora_id    uuid NOT NULL REFERENCES lora_models (id),
    kind       text NOT NULL,
    amount_usd double precision NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX job_costs_lora_id ON job_costs (lora_id);

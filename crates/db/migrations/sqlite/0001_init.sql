-- loraforge schema for SQLite (PRD 1, adapted: users come from JWT subjects, no auth schema).
-- UUIDs are TEXT (lowercase, hyphenated). Timestamps are TEXT in UTC RFC 3339 with exactly six
-- fractional digits ('2026-11-23T09:30:00.000000Z'), so text order is time order.

CREATE TABLE users (
    id         TEXT PRIMARY KEY NOT NULL,
    -- The latest email seen in the user's token, for "by user@example.com".
    email      TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE datasets (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL
);

CREATE TABLE dataset_images (
    dataset_id   TEXT NOT NULL REFERENCES datasets (id),
    idx          INTEGER NOT NULL CHECK (idx >= 0),
    file_name    TEXT NOT NULL,
    format       TEXT NOT NULL CHECK (format IN ('jpeg', 'png', 'webp')),
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    storage_key  TEXT NOT NULL,
    caption      TEXT,
    PRIMARY KEY (dataset_id, idx)
);

CREATE TABLE lora_models (
    -- A stable integer rowid for the FTS5 external-content index (an implicit rowid may be
    -- renumbered by VACUUM); everything else refers to `id`.
    seq                   INTEGER PRIMARY KEY,
    id                    TEXT NOT NULL UNIQUE,
    user_id               TEXT NOT NULL REFERENCES users (id),
    name                  TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    description           TEXT,
    dataset_id            TEXT NOT NULL REFERENCES datasets (id),
    params                TEXT NOT NULL CHECK (json_valid(params)),
    training_status       TEXT NOT NULL DEFAULT 'pending' CHECK (training_status IN
                              ('pending', 'queued', 'training', 'validating', 'completed', 'failed', 'cancelled')),
    stage                 TEXT,
    progress              INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    estimated_remaining   INTEGER CHECK (estimated_remaining >= 0),
    error                 TEXT,
    usage_count           INTEGER NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    storage_key           TEXT,
    file_size             INTEGER CHECK (file_size >= 0),
    validation_image_keys TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(validation_image_keys)),
    validation_passed     INTEGER CHECK (validation_passed IN (0, 1)),
    training_cost         REAL NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    completed_at          TEXT
);

-- A name is unique per user, exactly (names arrive trimmed).
CREATE UNIQUE INDEX lora_models_user_name_key ON lora_models (user_id, name);
-- Monthly counts, "my LoRAs", active-job counts per user.
CREATE INDEX lora_models_user_status_created ON lora_models (user_id, training_status, created_at);
-- Library sorts, unfiltered and filtered by status; the queue scan (queued, oldest first).
CREATE INDEX lora_models_popular ON lora_models (usage_count DESC, created_at DESC, id DESC);
CREATE INDEX lora_models_recent ON lora_models (created_at DESC, id DESC);
CREATE INDEX lora_models_name ON lora_models (lower(name), created_at DESC, id DESC);
CREATE INDEX lora_models_status_popular ON lora_models (training_status, usage_count DESC, created_at DESC, id DESC);
CREATE INDEX lora_models_status_recent ON lora_models (training_status, created_at DESC, id DESC);

-- Word-prefix search over name and description, kept in sync by the triggers below.
CREATE VIRTUAL TABLE lora_models_fts USING fts5 (
    name,
    description,
    content = 'lora_models',
    content_rowid = 'seq',
    tokenize = 'unicode61 remove_diacritics 0',
    prefix = '2 3'
);

CREATE TRIGGER lora_models_fts_insert AFTER INSERT ON lora_models BEGIN
    INSERT INTO lora_models_fts (rowid, name, description) VALUES (new.seq, new.name, new.description);
END;

CREATE TRIGGER lora_models_fts_delete AFTER DELETE ON lora_models BEGIN
    INSERT INTO lora_models_fts (lora_models_fts, rowid, name, description)
        VALUES ('delete', old.seq, old.name, old.description);
END;

CREATE TRIGGER lora_models_fts_update AFTER UPDATE OF name, description ON lora_models BEGIN
    INSERT INTO lora_models_fts (lora_models_fts, rowid, name, description)
        VALUES ('delete', old.seq, old.name, old.description);
    INSERT INTO lora_models_fts (rowid, name, description) VALUES (new.seq, new.name, new.description);
END;

-- One row per LoRA. The LoRA's training_status is the only status; this holds the run's lease.
CREATE TABLE training_jobs (
    lora_id      TEXT PRIMARY KEY NOT NULL REFERENCES lora_models (id),
    attempt      INTEGER NOT NULL DEFAULT 0,
    worker       TEXT,
    lease_until  TEXT,
    heartbeat_at TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE lora_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    lora_id TEXT NOT NULL REFERENCES lora_models (id),
    kind    TEXT NOT NULL CHECK (kind IN ('created', 'status', 'progress', 'updated')),
    status  TEXT NOT NULL,
    data    TEXT NOT NULL CHECK (json_valid(data)),
    at      TEXT NOT NULL
);
CREATE INDEX lora_events_lora_id ON lora_events (lora_id, id);

CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    lora_id      TEXT NOT NULL REFERENCES lora_models (id),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

-- Per-user settings; on Postgres also the row create_lora and claim_next_job lock per user.
CREATE TABLE user_training_limits (
    user_id       TEXT PRIMARY KEY NOT NULL,
    -- NULL: the service-wide default applies.
    monthly_limit INTEGER CHECK (monthly_limit >= 0),
    updated_at    TEXT NOT NULL
);

-- PRD 2 cost tracking (filled later).
CREATE TABLE job_costs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    lora_id    TEXT NOT NULL REFERENCES lora_models (id),
    kind       TEXT NOT NULL,
    amount_usd REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX job_costs_lora_id ON job_costs (lora_id);

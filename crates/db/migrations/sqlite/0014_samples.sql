-- Sample images rendered with a completed LoRA (the library's "try it"; PRD 1 option B). A batch
-- of 1-4 prompts renders as one worker attempt on a training backend, retried with backoff up to
-- 3 attempts. Its images are known (and keyed) when the batch is created; they are stored once
-- the batch is `completed`. The instance columns name the current attempt's instance so the
-- engine can watch and end it; `instance_gone_at` set = confirmed gone.
CREATE TABLE lora_sample_batches (
    id               TEXT PRIMARY KEY NOT NULL,
    lora_id          TEXT NOT NULL REFERENCES lora_models (id),
    user_id          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'rendering', 'completed', 'failed')),
    steps            INTEGER NOT NULL CHECK (steps >= 1),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    backend          TEXT,
    engine           TEXT,
    provider_id      TEXT,
    instance_name    TEXT,
    instance_gone_at TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX lora_sample_batches_lora ON lora_sample_batches (lora_id, created_at);
CREATE INDEX lora_sample_batches_due ON lora_sample_batches (next_attempt_at) WHERE status = 'queued';
CREATE INDEX lora_sample_batches_open ON lora_sample_batches (user_id) WHERE status IN ('queued', 'rendering');
CREATE INDEX lora_sample_batches_watch ON lora_sample_batches (id) WHERE backend IS NOT NULL AND instance_gone_at IS NULL;

CREATE TABLE lora_samples (
    batch_id        TEXT NOT NULL REFERENCES lora_sample_batches (id),
    idx             INTEGER NOT NULL CHECK (idx >= 0),
    prompt          TEXT NOT NULL,
    negative_prompt TEXT,
    seed            INTEGER NOT NULL CHECK (seed >= 0),
    scale           REAL NOT NULL,
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    storage_key     TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- Sample images rendered with a completed LoRA (the library's "try it"; PRD 1 option B). A batch
-- of 1-4 prompts renders as one worker attempt on a training backend, retried with backoff up to
-- 3 attempts. Its images are known (and keyed) when the batch is created; they are stored once
-- the batch is `completed`. The instance columns name the current attempt's instance so the
-- engine can watch and end it; `instance_gone_at` set = confirmed gone.
CREATE TABLE lora_sample_batches (
    id               uuid PRIMARY KEY,
    lora_id          uuid NOT NULL REFERENCES lora_models (id),
    user_id          uuid NOT NULL,
    status           text NOT NULL CHECK (status IN ('queued', 'rendering', 'completed', 'failed')),
    steps            integer NOT NULL CHECK (steps >= 1),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    backend          text,
    engine           text,
    provider_id      text,
    instance_name    text,
    instance_gone_at timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX lora_sample_batches_lora ON lora_sample_batches (lora_id, created_at);
CREATE INDEX lora_sample_batches_due ON lora_sample_batches (next_attempt_at) WHERE status = 'queued';
CREATE INDEX lora_sample_batches_open ON lora_sample_batches (user_id) WHERE status IN ('queued', 'rendering');
CREATE INDEX lora_sample_batches_watch ON lora_sample_batches (id) WHERE backend IS NOT NULL AND instance_gone_at IS NULL;

CREATE TABLE lora_samples (
    batch_id        uuid NOT NULL REFERENCES lora_sample_batches (id),
    idx             integer NOT NULL CHECK (idx >= 0),
    prompt          text NOT NULL,
    negative_prompt text,
    seed            bigint NOT NULL CHECK (seed >= 0),
    scale           double precision NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    storage_key     text NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- Runs: one row per attempt of a training job, on whatever backend ran it, kept for ever
-- (attempts, outcomes and costs are the owner's and the operator's record). Money is integer
-- micro-dollars. The row is written once the backend accepted the run (its instance exists);
-- an instance whose row was never written is found by its name (`instance_name`, which carries
-- the LoRA id and the attempt) and terminated.
CREATE TABLE training_runs (
    id                    TEXT PRIMARY KEY NOT NULL,
    lora_id               TEXT NOT NULL REFERENCES lora_models (id),
    attempt               INTEGER NOT NULL CHECK (attempt >= 1),
    backend               TEXT NOT NULL,
    -- The engine (worker id) that started the run and watches it.
    engine                TEXT NOT NULL,
    instance_name         TEXT NOT NULL,
    -- The backend's handle on the run (a pod id, a serverless job id, a local process).
    provider_id           TEXT NOT NULL,
    gpu_type              TEXT,
    price_per_hour_micros INTEGER CHECK (price_per_hour_micros >= 0),
    -- Just before the backend was asked for the instance, and when it had accepted it.
    created_at            TEXT NOT NULL,
    started_at            TEXT NOT NULL,
    -- The outcome (domain::outcome), first report wins.
    ended_at              TEXT,
    outcome               TEXT,
    reason                TEXT,
    -- What the worker reported with a `trained` outcome (file sizes, hashes, scores).
    result                TEXT CHECK (result IS NULL OR json_valid(result)),
    -- When the job acted on the outcome (requeued, failed, published).
    settled_at            TEXT,
    cost_micros           INTEGER CHECK (cost_micros >= 0),
    instance_gone_at      TEXT,
    terminate_failures    INTEGER NOT NULL DEFAULT 0,
    next_terminate_at     TEXT,
    last_terminate_error  TEXT,
    UNIQUE (lora_id, attempt)
);
-- Runs whose instance is not confirmed gone: the engine's scan, and the claim (a job is never
-- claimed while an earlier instance of it may still run).
CREATE INDEX training_runs_open ON training_runs (lora_id) WHERE instance_gone_at IS NULL;

-- Runs that failed through their own fault; `attempt` counts every run (crash-caused ones too).
ALTER TABLE training_jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
-- The newest checkpoint in the blob store (key and step), recorded by the attempt that
-- uploaded it; the next attempt, on any host, resumes from it.
ALTER TABLE training_jobs ADD COLUMN checkpoint_key TEXT;
ALTER TABLE training_jobs ADD COLUMN checkpoint_step INTEGER;
-- `run_id` now names the current run's training_runs.id. Runs recorded by an older version are
-- forgotten: their jobs are requeued when their leases end.
DROP INDEX training_jobs_run;
UPDATE training_jobs SET run_id = NULL;
ALTER TABLE training_jobs DROP COLUMN backend;
ALTER TABLE training_jobs DROP COLUMN run_worker;

-- A LoRA's training cost is the sum of its runs' costs, in micro-dollars (was a float).
ALTER TABLE lora_models ADD COLUMN training_cost_micros INTEGER NOT NULL DEFAULT 0 CHECK (training_cost_micros >= 0);
ALTER TABLE lora_models DROP COLUMN training_cost;
-- Why a LoRA is where it is when that is not an error (e.g. waiting for a GPU).
ALTER TABLE lora_models ADD COLUMN status_message TEXT;

-- Never written; a cost ledger in integers replaces it.
DROP TABLE job_costs;

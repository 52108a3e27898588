-- The job engine: which backend run belongs to a job, and the retry state of starting it.
-- `run_worker` is the engine (worker id) that started the run; only it watches the run.
ALTER TABLE training_jobs ADD COLUMN backend text;
ALTER TABLE training_jobs ADD COLUMN run_id text;
ALTER TABLE training_jobs ADD COLUMN run_worker text;
-- Failed start attempts of the current claim, and when the next may be made (retryable only).
ALTER TABLE training_jobs ADD COLUMN start_failures integer NOT NULL DEFAULT 0;
ALTER TABLE training_jobs ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE training_jobs ADD COLUMN last_error text;

-- The reaper's and the watcher's scans.
CREATE INDEX training_jobs_lease ON training_jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX training_jobs_run ON training_jobs (run_id) WHERE run_id IS NOT NULL;

-- When a sample attempt's worker was last heard of (its fetch of the batch, then each heartbeat);
-- NULL until its first word. The engine fails a rendering attempt not heard of within its lease
-- as `lease_expired` (`domain::samples::worker_silent`). Reset by each claim.
ALTER TABLE lora_sample_batches ADD COLUMN heard_at TEXT;

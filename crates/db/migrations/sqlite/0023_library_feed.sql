-- The library's change feed (`LibraryFeed`): every replica keeps the public library in memory
-- (the server's library index) and reads from here only the LoRAs that changed since its last
-- read. `rev` orders the changes: SQLite has one writer at a time, so the next rev (the highest
-- so far, plus one) is also the commit order. A change of anything a library row shows bumps
-- it; progress, stage and other run bookkeeping do not.
ALTER TABLE lora_models ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
CREATE INDEX lora_models_rev ON lora_models (rev, id);

CREATE TRIGGER lora_models_rev_insert AFTER INSERT ON lora_models BEGIN
    UPDATE lora_models SET rev = (SELECT coalesce(max(rev), 0) + 1 FROM lora_models) WHERE seq = new.seq;
END;

-- Setting rev itself is not in the column list, so this does not fire again.
CREATE TRIGGER lora_models_rev_update AFTER UPDATE OF
    user_id, name, description, training_status, usage_count, created_at, character_id,
    triggered_by_job_id, hidden_at, hidden_reason, hidden_by ON lora_models BEGIN
    UPDATE lora_models SET rev = (SELECT coalesce(max(rev), 0) + 1 FROM lora_models) WHERE seq = new.seq;
END;

-- A creator's e-mail or display name shows on each of their LoRAs.
CREATE TRIGGER users_rev_update AFTER UPDATE OF email, display_name ON users
    WHEN old.email IS NOT new.email OR old.display_name IS NOT new.display_name BEGIN
    UPDATE lora_models SET rev = (SELECT coalesce(max(rev), 0) + 1 FROM lora_models) WHERE user_id = new.id;
END;

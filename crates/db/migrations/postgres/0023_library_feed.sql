-- The library's change feed (`LibraryFeed`): every replica keeps the public library in memory
-- (the server's library index) and reads from here only the LoRAs that changed since its last
-- read. `rev` is the id of the transaction that last changed what a library row shows
-- (progress, stage and other run bookkeeping do not count). Transactions commit out of id
-- order, so a reader asks for `rev >= ` the oldest transaction still running at its previous
-- read (`pg_snapshot_xmin`), never for "after the last rev it saw".
ALTER TABLE lora_models ADD COLUMN rev xid8 NOT NULL DEFAULT '0';
CREATE INDEX lora_models_rev ON lora_models (rev, id);

CREATE FUNCTION lora_models_set_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.rev := pg_current_xact_id();
    RETURN NEW;
END;
$$;

CREATE TRIGGER lora_models_rev_insert BEFORE INSERT ON lora_models
    FOR EACH ROW EXECUTE FUNCTION lora_models_set_rev();

CREATE TRIGGER lora_models_rev_update BEFORE UPDATE ON lora_models
    FOR EACH ROW WHEN (
        (OLD.user_id, OLD.name, OLD.description, OLD.training_status, OLD.usage_count,
         OLD.created_at, OLD.character_id, OLD.triggered_by_job_id, OLD.hidden_at,
         OLD.hidden_reason, OLD.hidden_by)
        IS DISTINCT FROM
        (NEW.user_id, NEW.name, NEW.description, NEW.training_status, NEW.usage_count,
         NEW.created_at, NEW.character_id, NEW.triggered_by_job_id, NEW.hidden_at,
         NEW.hidden_reason, NEW.hidden_by))
    EXECUTE FUNCTION lora_models_set_rev();

-- A creator's e-mail or display name shows on each of their LoRAs.
CREATE FUNCTION users_touch_loras() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE lora_models SET rev = pg_current_xact_id() WHERE user_id = NEW.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_rev_update AFTER UPDATE ON users
    FOR EACH ROW WHEN ((OLD.email, OLD.display_name) IS DISTINCT FROM (NEW.email, NEW.display_name))
    EXECUTE FUNCTION users_touch_loras();

-- The generator's hand-off (POST /api/v1/generation/resolve).
-- Which character a LoRA was trained for and the generation job that asked for it: the resolve
-- finds a character's newest completed LoRA through the first index.
ALTER TABLE lora_models ADD COLUMN character_id text;
ALTER TABLE lora_models ADD COLUMN triggered_by_job_id text;
-- sha256 (lowercase hex) of the model file, recorded once (from the run's result, else hashed
-- from the blob) the first time a resolve hands the LoRA out.
ALTER TABLE lora_models ADD COLUMN sha256 text;
-- When a resolve first found the completed LoRA's file missing from storage; cleared when it is
-- found again. Missing on two checks at least 10 minutes apart fails the LoRA.
ALTER TABLE lora_models ADD COLUMN file_missing_since timestamptz;
CREATE INDEX lora_models_character ON lora_models (character_id, training_status, created_at);
CREATE INDEX lora_models_triggered_by ON lora_models (triggered_by_job_id);

-- One row per (generation, LoRA) handed out: a retried generation is counted once.
-- `day` is the UTC date of the first hand-out.
CREATE TABLE lora_uses (
    generation_id text NOT NULL,
    lora_id       uuid NOT NULL REFERENCES lora_models (id),
    user_id       uuid NOT NULL,
    day           date NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (generation_id, lora_id)
);
CREATE INDEX lora_uses_lora_day ON lora_uses (lora_id, day);

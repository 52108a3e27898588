-- The generator's hand-off asks, per character, for its newest completed visible LoRA. This index
-- holds exactly those rows, in that order, so the lookup is one index probe whatever the library's
-- size, and a planner without statistics (SQLite before ANALYZE) cannot prefer walking a status
-- index instead (docs/performance.md, "The generator's hand-off").
CREATE INDEX lora_models_character_ready ON lora_models (character_id, created_at, id)
    WHERE training_status = 'completed' AND hidden_at IS NULL;

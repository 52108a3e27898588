-- The scoring model's similarity score of each validation image and the threshold the rule
-- judged them by (`loraforge_domain::validation::ValidationScores` as JSON:
-- {"scores": [0.91, 0.7, 0.2], "threshold": 0.7}); NULL when no scoring model judged the LoRA.
-- Kept with the LoRA because the operator may change the threshold later.
ALTER TABLE lora_models ADD COLUMN validation_scores TEXT
    CHECK (validation_scores IS NULL OR json_valid(validation_scores));
-- The admin's review queue: LoRAs waiting in `validating` for a decision (stage
-- `awaiting_review`). Few rows match; the partial index keeps the lookup off the big table.
CREATE INDEX lora_models_awaiting_review ON lora_models (created_at DESC, id DESC)
    WHERE training_status = 'validating' AND stage = 'awaiting_review';

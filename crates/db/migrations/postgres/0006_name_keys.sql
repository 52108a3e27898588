-- A LoRA name is unique per owner by its key (`LoraName::key`, loraforge_domain::text::name_key:
-- NFKC, case-folded, without invisible characters), so "Cat", "CAT" and "Ｃａｔ" are one name.
-- The key is computed in Rust, never in SQL (one definition for both engines): every insert
-- writes it, and rows from before this migration are filled in by the repository when it
-- connects (`backfill_name_keys`). There, a LoRA whose key an older LoRA of the same owner
-- already holds gets a key of its own (`<key>` U+001F `<id>`, which no name can have), so
-- existing LoRAs keep their names and the older one keeps the name. Until then the key is NULL,
-- and NULLs never collide.
ALTER TABLE lora_models ADD COLUMN name_key TEXT;
DROP INDEX lora_models_user_name_key;
CREATE UNIQUE INDEX lora_models_user_name_key ON lora_models (user_id, name_key);

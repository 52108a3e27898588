-- "Who already uses this name?" as people type a new LoRA's name (`NameStore::name_use`):
-- every LoRA with one name key, whoever owns it. The unique index leads with user_id, so it
-- cannot serve a lookup across users.
CREATE INDEX lora_models_name_key ON lora_models (name_key);

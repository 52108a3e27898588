-- Search in the sort order (issue 9): one entry per (term, LoRA) carrying the LoRA's sort keys,
-- so a page of a search is the first entries of one term in the wanted order and a capped count
-- stops after SEARCH_TOTAL_CAP + 1 entries (src/terms.rs has the rule and the reasons; the FTS5
-- index stays for what the terms do not answer). Terms are computed in Rust, never in SQL: every
-- write of a name or description indexes its LoRA in the same transaction, and rows written
-- before this migration (or by an older build) have search_terms_version 0 until the repository
-- indexes them (when it connects, and with any later write).
CREATE TABLE lora_search_terms (
    term        TEXT NOT NULL,
    usage_count INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (term, usage_count DESC, created_at DESC, id DESC)
) WITHOUT ROWID;
-- sort=recent; sort=popular is the primary key's order.
CREATE INDEX lora_search_terms_recent ON lora_search_terms (term, created_at DESC, id DESC);
-- Indexed words longer than 3 characters: a longer query word stands for those it begins.
CREATE TABLE lora_search_words (word TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
ALTER TABLE lora_models ADD COLUMN search_terms_version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX lora_models_search_terms_version ON lora_models (search_terms_version);

-- Search in the sort order (issue 9): one entry per (term, LoRA) carrying the LoRA's sort keys,
-- so a page of a search is the first entries of one term in the wanted order (an index-only
-- scan) and a capped count stops after SEARCH_TOTAL_CAP + 1 entries, with no heap recheck of
-- every match as the tsvector's GIN index needs (src/terms.rs has the rule and the reasons; the
-- GIN index stays for what the terms do not answer). Terms are computed in Rust, never in SQL:
-- every write of a name or description indexes its LoRA in the same transaction, and rows
-- written before this migration (or by an older build) have search_terms_version 0 until the
-- repository indexes them (when it connects, and with any later write). "C" collation: byte
-- order, so a prefix is a range.
CREATE TABLE lora_search_terms (
    term        text COLLATE "C" NOT NULL,
    usage_count bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    lora_id     uuid NOT NULL
);
CREATE UNIQUE INDEX lora_search_terms_popular
    ON lora_search_terms (term, usage_count DESC, created_at DESC, lora_id DESC);
CREATE INDEX lora_search_terms_recent ON lora_search_terms (term, created_at DESC, lora_id DESC);
-- Indexed words longer than 3 characters: a longer query word stands for those it begins.
CREATE TABLE lora_search_words (word text COLLATE "C" PRIMARY KEY);
ALTER TABLE lora_models ADD COLUMN search_terms_version integer NOT NULL DEFAULT 0;
CREATE INDEX lora_models_search_terms_version ON lora_models (search_terms_version);

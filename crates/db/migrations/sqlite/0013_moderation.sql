-- Content moderation (PRD 4): reports of LoRAs and the LoRAs admins hid. Nothing is deleted:
-- a hidden LoRA keeps its row, its files and its reports; `hidden_at` NULL means visible.
ALTER TABLE lora_models ADD COLUMN hidden_at TEXT;
-- Shown to the LoRA's owner.
ALTER TABLE lora_models ADD COLUMN hidden_reason TEXT;
-- The admin (user id) who hid it.
ALTER TABLE lora_models ADD COLUMN hidden_by TEXT;

-- One row per report. `reason` is a `domain::moderation::ReportReason` code; a resolved report
-- has `resolved_at`, `resolved_by` and `resolution` (`hidden` or `dismissed`) together.
CREATE TABLE lora_reports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lora_id     TEXT NOT NULL REFERENCES lora_models (id),
    reporter_id TEXT NOT NULL,
    reason      TEXT NOT NULL,
    details     TEXT CHECK (details IS NULL OR length(details) <= 1000),
    created_at  TEXT NOT NULL,
    resolved_at TEXT,
    resolved_by TEXT,
    resolution  TEXT,
    CHECK ((resolved_at IS NULL) = (resolution IS NULL) AND (resolved_at IS NULL) = (resolved_by IS NULL))
);
-- One open report per (LoRA, reporter); after it is resolved the same person may report again.
CREATE UNIQUE INDEX lora_reports_one_open ON lora_reports (lora_id, reporter_id) WHERE resolved_at IS NULL;
-- The admin queue (open, oldest first) and per-LoRA open counts.
CREATE INDEX lora_reports_open ON lora_reports (lora_id) WHERE resolved_at IS NULL;
CREATE INDEX lora_reports_queue ON lora_reports (resolved_at, id);

-- The public library never lists hidden LoRAs: these partial copies of the library's sort
-- indexes hold visible rows only, so a listing (and its count) walks them without reading the
-- table to skip hidden rows. The full indexes stay for listings that include hidden LoRAs (the
-- owner's, an admin's) and for the queue scan.
CREATE INDEX lora_models_popular_visible ON lora_models (usage_count DESC, created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_recent_visible ON lora_models (created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_name_visible ON lora_models (lower(name), created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_status_popular_visible ON lora_models (training_status, usage_count DESC, created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_status_recent_visible ON lora_models (training_status, created_at DESC, id DESC) WHERE hidden_at IS NULL;

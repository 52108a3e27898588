-- Content moderation (PRD 4): reports of LoRAs and the LoRAs admins hid. Nothing is deleted:
-- a hidden LoRA keeps its row, its files and its reports; `hidden_at` NULL means visible.
ALTER TABLE lora_models ADD COLUMN hidden_at timestamptz;
-- Shown to the LoRA's owner.
ALTER TABLE lora_models ADD COLUMN hidden_reason text;
-- The admin (user id) who hid it.
ALTER TABLE lora_models ADD COLUMN hidden_by uuid;

-- One row per report. `reason` is a `domain::moderation::ReportReason` code; a resolved report
-- has `resolved_at`, `resolved_by` and `resolution` (`hidden` or `dismissed`) together.
CREATE TABLE lora_reports (
    id          bigserial PRIMARY KEY,
    lora_id     uuid NOT NULL REFERENCES lora_models (id),
    reporter_id uuid NOT NULL,
    reason      text NOT NULL,
    details     text CHECK (details IS NULL OR char_length(details) <= 1000),
    created_at  timestamptz NOT NULL,
    resolved_at timestamptz,
    resolved_by uuid,
    resolution  text,
    CHECK ((resolved_at IS NULL) = (resolution IS NULL) AND (resolved_at IS NULL) = (resolved_by IS NULL))
);
-- One open report per (LoRA, reporter); after it is resolved the same person may report again.
CREATE UNIQUE INDEX lora_reports_one_open ON lora_reports (lora_id, reporter_id) WHERE resolved_at IS NULL;
-- The admin queue (open, oldest first) and per-LoRA open counts.
CREATE INDEX lora_reports_open ON lora_reports (lora_id) WHERE resolved_at IS NULL;
CREATE INDEX lora_reports_queue ON lora_reports (resolved_at, id);

-- The public library never lists hidden LoRAs: these partial copies of the library's sort
-- indexes hold visible rows only, so a listing (and its count) walks them without visiting
-- hidden rows. The full indexes stay for listings that include hidden LoRAs (the owner's, an
-- admin's) and for the queue scan.
CREATE INDEX lora_models_popular_visible ON lora_models (usage_count DESC, created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_recent_visible ON lora_models (created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_name_visible ON lora_models ((lower(name)) COLLATE "C", created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_status_popular_visible ON lora_models (training_status, usage_count DESC, created_at DESC, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX lora_models_status_recent_visible ON lora_models (training_status, created_at DESC, id DESC) WHERE hidden_at IS NULL;

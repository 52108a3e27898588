-- Issue 9 items 5 and 6: dataset quotas and retention, content-addressed image blobs, and
-- creators' public names.

-- The name a creator shows the library instead of their e-mail (NULL: one derived from the
-- account, see domain::creator).
ALTER TABLE users ADD COLUMN display_name TEXT CHECK (display_name IS NULL OR length(display_name) BETWEEN 1 AND 50);

-- Bytes a dataset stored (the sum of its images'), for the per-day byte quota; and when the
-- retention sweep removed the images of a dataset its LoRAs were trained from (the record stays,
-- its LoRAs name it; a removed dataset cannot be trained again).
ALTER TABLE datasets ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0);
ALTER TABLE datasets ADD COLUMN images_removed_at TEXT;
UPDATE datasets SET bytes = coalesce((SELECT sum(i.bytes) FROM dataset_images i WHERE i.dataset_id = datasets.id), 0);
-- Quota counts per user and day; the sweep's scan by age; which datasets LoRAs use.
CREATE INDEX datasets_user_created ON datasets (user_id, created_at);
CREATE INDEX datasets_created ON datasets (created_at);
CREATE INDEX lora_models_dataset ON lora_models (dataset_id);

-- Image blobs are content-addressed (keys::image_blob: the sha256 of the stored bytes), so one
-- blob may back images of many datasets. A blob is referenced by the dataset_images rows naming
-- its key. The sweep deletes a blob only when nothing references it and no intake claimed it
-- within a grace period (an intake claims its keys before it writes them, and its dataset
-- references them once inserted); `deleting_since` marks a blob whose bytes the sweep is
-- deleting, which an intake may not claim until the sweep forgets it.
CREATE INDEX dataset_images_storage_key ON dataset_images (storage_key);
CREATE TABLE image_blobs (
    key            TEXT PRIMARY KEY NOT NULL,
    claimed_at     TEXT NOT NULL,
    deleting_since TEXT
);
-- Images stored before this version (per-dataset keys) are swept the same way.
INSERT INTO image_blobs (key, claimed_at)
    SELECT i.storage_key, min(d.created_at) FROM dataset_images i JOIN datasets d ON d.id = i.dataset_id
    GROUP BY i.storage_key;
CREATE INDEX image_blobs_claimed ON image_blobs (claimed_at);

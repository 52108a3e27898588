-- A `reimburse` credit entry (domain::credit): the charge of a completed LoRA given back when
-- the LoRA fails later because its file is gone from storage (PRD 4 Scenario 8), so a failed
-- LoRA costs its owner nothing whenever it failed. At most one per LoRA, like the other per-LoRA
-- kinds (credit_entries_once). SQLite cannot change a CHECK constraint: the table is rebuilt
-- with the same columns, rows and ids (nothing references it).
CREATE TABLE credit_entries_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT NOT NULL,
    lora_id       TEXT REFERENCES lora_models (id),
    kind          TEXT NOT NULL CHECK (kind IN ('grant', 'adjust', 'reserve', 'release', 'deduct', 'refund', 'reimburse')),
    amount_micros INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    -- The admin who granted or adjusted; NULL for the service's own entries.
    actor         TEXT,
    created_at    TEXT NOT NULL,
    CHECK ((lora_id IS NULL) = (kind IN ('grant', 'adjust')))
);
INSERT INTO credit_entries_new (id, user_id, lora_id, kind, amount_micros, reason, actor, created_at)
    SELECT id, user_id, lora_id, kind, amount_micros, reason, actor, created_at FROM credit_entries;
DROP TABLE credit_entries;
ALTER TABLE credit_entries_new RENAME TO credit_entries;
-- One of each per-LoRA kind per LoRA: a settlement run twice (a crash, two replicas, two
-- resolves racing) writes nothing the second time.
CREATE UNIQUE INDEX credit_entries_once ON credit_entries (lora_id, kind) WHERE lora_id IS NOT NULL;
-- A user's sums and history, newest first.
CREATE INDEX credit_entries_user ON credit_entries (user_id, id);

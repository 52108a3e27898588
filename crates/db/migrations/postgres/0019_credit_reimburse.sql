-- A `reimburse` credit entry (domain::credit): the charge of a completed LoRA given back when
-- the LoRA fails later because its file is gone from storage (PRD 4 Scenario 8), so a failed
-- LoRA costs its owner nothing whenever it failed. At most one per LoRA, like the other per-LoRA
-- kinds (credit_entries_once).
ALTER TABLE credit_entries DROP CONSTRAINT credit_entries_kind_check;
ALTER TABLE credit_entries ADD CONSTRAINT credit_entries_kind_check
    CHECK (kind IN ('grant', 'adjust', 'reserve', 'release', 'deduct', 'refund', 'reimburse'));

-- Credits (seed 003; domain::credit): an append-only ledger per user, in integer micro-dollars.
-- amount_micros is the entry's signed effect on what the user may still spend: grant +,
-- adjust ±, reserve −, release +, deduct −, refund +. available = Σ amount; reserved =
-- −Σ amount over reserve/release/refund; balance = available + reserved. Rows are never updated
-- or deleted. user_id has no foreign key: an admin may grant credits before the user's first
-- request.
CREATE TABLE credit_entries (
    id            bigserial PRIMARY KEY,
    user_id       uuid NOT NULL,
    lora_id       uuid REFERENCES lora_models (id),
    kind          text NOT NULL CHECK (kind IN ('grant', 'adjust', 'reserve', 'release', 'deduct', 'refund')),
    amount_micros bigint NOT NULL,
    reason        text NOT NULL,
    -- The admin who granted or adjusted; NULL for the service's own entries.
    actor         text,
    created_at    timestamptz NOT NULL,
    CHECK ((lora_id IS NULL) = (kind IN ('grant', 'adjust')))
);
-- One reserve, release, deduct and refund per LoRA: a settlement run twice (a crash, two
-- replicas) writes nothing the second time.
CREATE UNIQUE INDEX credit_entries_once ON credit_entries (lora_id, kind) WHERE lora_id IS NOT NULL;
-- A user's sums and history, newest first.
CREATE INDEX credit_entries_user ON credit_entries (user_id, id);

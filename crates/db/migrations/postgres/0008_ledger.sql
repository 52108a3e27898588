-- The cost ledger: what the service spent, append-only (never updated or deleted), in integer
-- micro-dollars. `training_cost_micros` on a LoRA is the sum of its `gpu` and `validation`
-- entries; every total the admin views show is a sum of these rows. `idempotency_key` makes a
-- retried write a no-op (`gpu:<run id>`, `storage:<lora id>:<YYYY-MM>`).
CREATE TABLE cost_entries (
    id              bigserial PRIMARY KEY,
    lora_id         uuid NOT NULL REFERENCES lora_models (id),
    user_id         uuid NOT NULL,
    -- The training backend; NULL for storage.
    backend         TEXT,
    kind            TEXT NOT NULL CHECK (kind IN ('gpu', 'validation', 'storage')),
    -- The UTC month the cost falls in, `YYYY-MM`.
    month           TEXT NOT NULL CHECK (length(month) = 7),
    amount_micros   bigint NOT NULL CHECK (amount_micros >= 0),
    run_id          uuid,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL
);
CREATE INDEX cost_entries_month ON cost_entries (month);
CREATE INDEX cost_entries_lora ON cost_entries (lora_id, id);

-- The system budget an admin set, overriding `LORAFORGE_MONTHLY_BUDGET_USD` on every replica.
-- One row at most (`id` = 1).
CREATE TABLE budget_settings (
    id                   integer PRIMARY KEY CHECK (id = 1),
    monthly_budget_micros bigint NOT NULL CHECK (monthly_budget_micros >= 0),
    updated_by           TEXT,
    updated_at           timestamptz NOT NULL
);

-- Budget alerts already raised: one per month and level (`warning`, `exhausted`), so each is
-- raised once a month whichever replica sees the spend first.
CREATE TABLE budget_alerts (
    month      TEXT NOT NULL,
    level      TEXT NOT NULL,
    raised_at  timestamptz NOT NULL,
    PRIMARY KEY (month, level)
);

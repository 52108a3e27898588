-- A provider's webhook reaches one replica, but the run it is about may be watched by another
-- replica's engine. The webhook route records the nudge here; every engine reads this table at
-- each tick and observes a backend nudged since its last read at once (`NudgeStore`).
CREATE TABLE backend_nudges (
    backend   text PRIMARY KEY,
    nudged_at timestamptz NOT NULL
);

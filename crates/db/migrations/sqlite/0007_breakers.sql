-- Circuit breakers, one per training backend (domain::breaker): the state, when it opened, the
-- half-open probe's holder, and from when failures count. Rows appear on a backend's first event;
-- a backend without one is closed.
CREATE TABLE backend_breakers (
    backend          TEXT PRIMARY KEY NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    opened_at        TEXT,
    probe_holder     TEXT,
    probe_started_at TEXT,
    counted_from     TEXT,
    updated_at       TEXT NOT NULL
);

-- Provider-side failures, one row each, keyed so a failure reported twice (two replicas settling
-- the same run) counts once. Rows older than the window are of no more use and may be pruned.
CREATE TABLE breaker_failures (
    backend     TEXT NOT NULL,
    failure_key TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (backend, failure_key)
);
CREATE INDEX breaker_failures_at ON breaker_failures (backend, at);

-- Every change of a breaker's state, append-only, for operators.
CREATE TABLE breaker_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    backend    TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    -- The admin user who forced it; NULL when the breaker decided.
    forced_by  TEXT,
    at         TEXT NOT NULL
);
CREATE INDEX breaker_transitions_backend ON breaker_transitions (backend, id);

-- Why the router chose the run's backend.
ALTER TABLE training_runs ADD COLUMN route_reason TEXT;

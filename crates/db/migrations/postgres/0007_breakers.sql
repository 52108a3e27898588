-- Circuit breakers, one per training backend (domain::breaker): the state, when it opened, the
-- half-open probe's holder, and from when failures count. Rows appear on a backend's first event;
-- a backend without one is closed.
CREATE TABLE backend_breakers (
    backend          text PRIMARY KEY,
    state            text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    opened_at        timestamptz,
    probe_holder     text,
    probe_started_at timestamptz,
    counted_from     timestamptz,
    updated_at       timestamptz NOT NULL
);

-- Provider-side failures, one row each, keyed so a failure reported twice (two replicas settling
-- the same run) counts once. Rows older than the window are of no more use and may be pruned.
CREATE TABLE breaker_failures (
    backend     text NOT NULL,
    failure_key text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (backend, failure_key)
);
CREATE INDEX breaker_failures_at ON breaker_failures (backend, at);

-- Every change of a breaker's state, append-only, for operators.
CREATE TABLE breaker_transitions (
    id         bigserial PRIMARY KEY,
    backend    text NOT NULL,
    from_state text NOT NULL,
    to_state   text NOT NULL,
    reason     text NOT NULL,
    -- The admin user who forced it; NULL when the breaker decided.
    forced_by  text,
    at         timestamptz NOT NULL
);
CREATE INDEX breaker_transitions_backend ON breaker_transitions (backend, id);

-- Why the router chose the run's backend.
ALTER TABLE training_runs ADD COLUMN route_reason text;

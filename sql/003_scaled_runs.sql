-- analytics-demo schema, version 3: runs of several instances (RUN_NAME, INSTANCE_COUNT).
-- Applied like 001 and 002 (in order, inside the advisory lock); every statement is idempotent.

-- Which coordinated run a process belonged to, as which instance, when its load started, and
-- its final summary with its latency histograms (`report --run-name` merges them).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS run_name        text;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS instance_index  integer;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS instance_count  integer;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS load_started_at timestamptz;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS summary         jsonb;
CREATE INDEX IF NOT EXISTS runs_by_run_name ON runs (run_name) WHERE run_name IS NOT NULL;

-- The start barrier: one row per named run, with the instant every instance starts its load
-- (set once, by the first instance that sees all of them registered).
CREATE TABLE IF NOT EXISTS scaled_runs (
    run_name       text        PRIMARY KEY,
    instance_count integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    start_at       timestamptz
);

-- The instances registered at the barrier (a restarted instance takes its index over).
CREATE TABLE IF NOT EXISTS run_instances (
    run_name       text        NOT NULL,
    instance_index integer     NOT NULL,
    run_id         bigint      NOT NULL,
    host           text,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_name, instance_index)
);

-- analytics-demo schema, version 2: what `verify` needs to judge exactly the runs a Redis
-- target was given. Applied like 001 (in order, inside the advisory lock); every statement
-- is idempotent.

-- Per run and counter key: the increments that run acknowledged (and left unknown). Kept by
-- the writer in the same transaction as the COPY of the events and the event_rollups upsert,
-- deleted by retention like them. `verify` sums the rows of the runs the target declares.
CREATE TABLE IF NOT EXISTS run_rollups (
    run_id      bigint   NOT NULL,
    org_id      integer  NOT NULL,
    bucket      integer  NOT NULL,
    event_type  smallint NOT NULL,
    events      bigint   NOT NULL,
    acked       bigint   NOT NULL,
    unknown     bigint   NOT NULL,
    PRIMARY KEY (run_id, org_id, bucket, event_type)
);

-- How a run ended. While it runs the writer sets `last_seen` every few seconds (with the
-- events started and rows written so far); at its end it sets `ended_at`, `end_state`
-- ('clean', or 'rows_dropped' with `rows_dropped` rows that never reached PostgreSQL).
-- `ended_at` NULL with an old `last_seen`: the run did not end cleanly (crash, SIGKILL).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS ended_at       timestamptz;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS end_state      text;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS rows_dropped   bigint;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS last_seen      timestamptz;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS events_started bigint;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS rows_written   bigint;

-- analytics-demo schema, version 1. Applied at start inside an advisory lock; every
-- statement is idempotent so concurrent or repeated starts are safe.

-- One row per generated event, with the outcome of its Redis counter write. This is the
-- ground truth `verify` compares Redis against.
CREATE TABLE IF NOT EXISTS events (
    run_id      bigint      NOT NULL,
    event_id    bigint      NOT NULL,  -- shard << 48 | per-shard sequence
    ts          timestamptz NOT NULL,
    bucket      integer     NOT NULL,  -- UTC hour as YYYYMMDDHH, the counter key's hour
    org_id      integer     NOT NULL,
    user_id     integer     NOT NULL,
    event_type  smallint    NOT NULL,  -- 0 page_view, 1 click, 2 conversion, 3 signup, 4 purchase
    outcome     smallint    NOT NULL   -- 0 acked, 1 failed, 2 unknown
);
-- Retention deletes by time: a BRIN index costs almost nothing on insert.
CREATE INDEX IF NOT EXISTS events_ts_brin ON events USING brin (ts);

-- Hourly rollups, maintained in the same transaction as the COPY of their events.
-- Cache-miss queries read these; `verify` reads acked/unknown per counter key.
CREATE TABLE IF NOT EXISTS event_rollups (
    org_id      integer  NOT NULL,
    bucket      integer  NOT NULL,
    event_type  smallint NOT NULL,
    events      bigint   NOT NULL,
    acked       bigint   NOT NULL,
    unknown     bigint   NOT NULL,
    PRIMARY KEY (org_id, bucket, event_type)
);

-- Every committed writer batch: makes a retried batch idempotent (a COPY whose commit
-- reply was lost is not written twice).
CREATE TABLE IF NOT EXISTS writer_batches (
    run_id       bigint      NOT NULL,
    batch_seq    bigint      NOT NULL,
    rows         integer     NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, batch_seq)
);

-- One row per process start (configuration without secrets).
CREATE TABLE IF NOT EXISTS runs (
    run_id     bigint      PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    config     jsonb       NOT NULL
);

-- 006: the compact hourly history the status page draws (rows synced each way
-- per hour, the journal backlog over time). Kept apart from _sync_log, which
-- holds one row per table per cycle (tens of thousands a day): charting days
-- of it would read that much on every refresh of the page.
--
-- Semantics (and one index):
--   _sync_history   one row per (hour, direction). `hour` is the UTC hour
--                   (date_trunc('hour', now())) of the transaction that synced
--                   the rows; `direction` is 'UP' (journal rows upstream
--                   confirmed) or 'DOWN' (upstream rows applied locally).
--                   `rows` is incremented in the same local transaction that
--                   records the progress: the pusher's mark transaction (with
--                   _sync_metadata.records_synced_up) and the down path's page
--                   transaction (with the feed cursor), so a crash never counts
--                   a batch twice nor loses one. One row per direction keeps
--                   the two tasks from waiting on each other's row locks.
--   _sync_backlog_history  one row per UTC hour: the largest and the latest
--                   journal backlog (unsynced, unparked rows) and parked rows
--                   the health check sampled in that hour (every
--                   health_check_seconds), upserted by that check alone.
--
--   (idx_sync_pending_parked, the parked journal rows' index, moved with the
--   journal to sql/journal/001_journal.sql.)
--
-- Both tables are pruned by the health check after 30 days (about 1,500 rows
-- at most). Idempotent.
CREATE TABLE IF NOT EXISTS _sync_history (
    hour TIMESTAMPTZ NOT NULL,
    direction VARCHAR(4) NOT NULL CHECK (direction IN ('UP', 'DOWN')),
    rows BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, direction)
);

CREATE TABLE IF NOT EXISTS _sync_backlog_history (
    hour TIMESTAMPTZ PRIMARY KEY,
    max_backlog BIGINT NOT NULL,
    last_backlog BIGINT NOT NULL,
    last_parked BIGINT NOT NULL
);

-- journal/001: the up-path journal, in its own database.
--
-- Applied by `init` to the journal database ([local_postgres] journal_database,
-- default <database>_journal, created by `init` on the clinic's cluster). The
-- journal lives beside the clinic's database rather than in it: logical
-- decoding reads every WAL record of the cluster but drops another database's
-- records at the first check, so the journal's own writes (capture's inserts,
-- the pusher's marks, pruning) cost the walsender nothing.
--
-- Semantics:
--   _sync_pending   the up-path journal. The WAL consumer appends one row per
--                   captured change, in commit order, in one transaction per
--                   decoded transaction (several decoded transactions may share one
--                   transaction, a transaction is never split across two), and in
--                   that same transaction moves _sync_capture.journaled_lsn.
--                   (commit_lsn, ordinal) identifies a change; the pusher's progress
--                   is a cursor (002: the table becomes _sync_journal, _sync_pending
--                   a view), parked rows carry parked_at and their error. A DELETE row is
--                   a tombstone the down path and `verify --repair` consult.
--                   `data` holds the row image as JSON: column values in PostgreSQL's
--                   text form as JSON strings (json/jsonb columns embedded as JSON);
--                   TOAST values the WAL did not carry and could not be filled are
--                   absent from `data` and listed in unchanged_columns.
--   _sync_capture   one row per replication slot: journaled_lsn, the commit LSN of
--                   the last decoded transaction committed to _sync_pending (moved in
--                   the same transaction as those rows; transactions the slot re-sends
--                   at or below it are skipped, which is what makes capture
--                   idempotent, so pruning the journal never re-opens a gap);
--                   confirmed_end_lsn, the end LSN last confirmed to the slot;
--                   uploaded_existing_at (`init --upload-existing`); pruned_through_lsn
--                   (retention; `replay` refuses to start at or below it);
--                   system_identifier, the cluster whose LSNs these are; epoch, the
--                   capture era (a new one when `init` creates the slot or finds
--                   another cluster's bookkeeping: LSNs restart or jump then).
--   _sync_epoch     one row per epoch: the first journal id it wrote. A journal row
--                   belongs to the newest epoch whose first_journal_id <= its id.
--
-- Upgrade: installations from before this file kept these tables in the clinic's
-- database; `init` moves their rows here (ids, positions and epochs kept) in one
-- transaction, and only then drops the old tables (src/store/journal_move.rs).
--
-- Idempotent.

-- Guarded: once 002 has renamed the table to _sync_journal, _sync_pending is a
-- view, on which these statements would fail.
DO $cvsync$
BEGIN
    IF to_regclass('_sync_journal') IS NULL THEN
        CREATE TABLE IF NOT EXISTS _sync_pending (
            id BIGSERIAL PRIMARY KEY,
            table_name VARCHAR(100) NOT NULL,
            record_id TEXT,                  -- NULL for TRUNCATE
            operation VARCHAR(10) NOT NULL,  -- INSERT, UPDATE, DELETE, TRUNCATE
            data JSONB,
            created_at TIMESTAMPTZ DEFAULT NOW(),
            synced BOOLEAN DEFAULT FALSE,
            synced_at TIMESTAMPTZ,
            error TEXT,
            retry_count INTEGER DEFAULT 0,
            commit_lsn PG_LSN,
            ordinal INTEGER,
            commit_ts TIMESTAMPTZ,
            xid BIGINT,
            unchanged_columns TEXT[],
            parked_at TIMESTAMPTZ
        );
        -- (001 also created a partial queue index, idx_sync_pending_queue; 002 drops
        -- it: the queue is a range of the primary key after the pusher's cursor.)
        -- Idempotency key of a captured change.
        CREATE UNIQUE INDEX IF NOT EXISTS idx_sync_pending_change ON _sync_pending(commit_lsn, ordinal);
        -- Latest image / tombstone of a record (TOAST fill, delete tombstones).
        CREATE INDEX IF NOT EXISTS idx_sync_pending_record ON _sync_pending(table_name, record_id, id);
        -- The parked rows (unsynced, parked_at set), for the status page's list and
        -- every count of them. Rows are journaled unparked, so capture never writes
        -- this index; only parking a row (rare) and marking a parked row synced do.
        CREATE INDEX IF NOT EXISTS idx_sync_pending_parked ON _sync_pending (parked_at)
            WHERE synced = FALSE AND parked_at IS NOT NULL;
    END IF;
END
$cvsync$;

CREATE TABLE IF NOT EXISTS _sync_capture (
    slot_name TEXT PRIMARY KEY,
    journaled_lsn PG_LSN NOT NULL DEFAULT '0/0',
    confirmed_end_lsn PG_LSN NOT NULL DEFAULT '0/0',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    uploaded_existing_at TIMESTAMPTZ,
    pruned_through_lsn PG_LSN,
    system_identifier TEXT,
    epoch INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS _sync_epoch (
    epoch INTEGER PRIMARY KEY,
    first_journal_id BIGINT NOT NULL,
    system_identifier TEXT,
    started_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

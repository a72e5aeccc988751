-- 002: the WAL consumer's durable progress.
--
-- Semantics: one row per replication slot. journaled_lsn is the commit LSN of
-- the last decoded transaction whose changes are committed to _sync_pending; it
-- is updated in the same local transaction as those changes. On restart the
-- slot may re-send transactions it already sent (the last acknowledgement may
-- not have reached the server), and every transaction with a commit LSN at or
-- below journaled_lsn is skipped: this, not the journal's contents, is what
-- makes capture idempotent, so pruning the journal never re-opens a gap.
-- confirmed_end_lsn is the end LSN the service last confirmed to the slot.

CREATE TABLE IF NOT EXISTS _sync_capture (
    slot_name TEXT PRIMARY KEY,
    journaled_lsn PG_LSN NOT NULL DEFAULT '0/0',
    confirmed_end_lsn PG_LSN NOT NULL DEFAULT '0/0',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
-- When `init --upload-existing` journaled the rows that predate the slot.
ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS uploaded_existing_at TIMESTAMPTZ;
-- The highest commit LSN pruned from the journal by retention: `replay`
-- refuses to start at or below it (those changes are gone).
ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS pruned_through_lsn PG_LSN;

-- 004: this clinic as one writer among several, and its change-feed cursor.
--
-- Semantics:
--   _sync_capture.system_identifier  the cluster (pg_control_system()) whose WAL the
--                   bookkeeping describes. LSNs of another cluster mean nothing here: a
--                   database restored into a new cluster (new server, pg_dump/pg_restore)
--                   carries the old cluster's journaled_lsn, which is above every new LSN.
--                   `run`/`once` refuse to start on a mismatch and `init` starts a new epoch.
--   _sync_capture.epoch   the capture era. Every change sent upstream is positioned by
--                   (epoch, commit LSN, ordinal): upstream applies one writer's changes in
--                   that order. `init` starts a new epoch (and resets journaled_lsn /
--                   confirmed_end_lsn) whenever it creates the slot or finds another
--                   cluster's bookkeeping, because LSNs restart or jump then.
--   _sync_epoch     one row per epoch: the first journal id it wrote. A journal row
--                   belongs to the newest epoch whose first_journal_id <= its id, so rows
--                   a restore brought back keep the position they were captured with.
--   _sync_metadata.feed_prev / feed_target / feed_after   the down path's cursor in the
--                   upstream change feed (sql/upstream/003_row_state.sql): the last
--                   completed snapshot window, the window being read, and the last
--                   version_id read inside it. NULL feed_prev = nothing read yet (a new
--                   table downloads everything; an upgraded one everything stamped after
--                   its old last_sync_from_supabase watermark).
--
-- Idempotent.

-- _sync_capture and _sync_epoch now live in the journal database
-- (sql/journal/001_journal.sql); an older installation's copy here is brought
-- to its last layout so that `init` can move it.
DO $$
BEGIN
    IF to_regclass('_sync_capture') IS NOT NULL THEN
        ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS system_identifier TEXT;
        ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS epoch INTEGER NOT NULL DEFAULT 1;
    END IF;
END $$;

ALTER TABLE _sync_metadata ADD COLUMN IF NOT EXISTS feed_prev TEXT;
ALTER TABLE _sync_metadata ADD COLUMN IF NOT EXISTS feed_target TEXT;
ALTER TABLE _sync_metadata ADD COLUMN IF NOT EXISTS feed_after BIGINT NOT NULL DEFAULT 0;

-- 002: the WAL consumer's durable progress (_sync_capture).
--
-- Since journal/001 the table lives in the journal database with the journal
-- (sql/journal/001_journal.sql, where its semantics are). Here only an older
-- installation's table is brought to its last layout, so that `init` can move
-- it there (then it drops it).
--
-- Idempotent.

DO $$
BEGIN
    IF to_regclass('_sync_capture') IS NOT NULL THEN
        ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS uploaded_existing_at TIMESTAMPTZ;
        ALTER TABLE _sync_capture ADD COLUMN IF NOT EXISTS pruned_through_lsn PG_LSN;
    END IF;
END $$;

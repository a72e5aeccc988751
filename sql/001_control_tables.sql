-- 001: the specification's control tables, extended for WAL capture.
--
-- Semantics:
--   _sync_metadata  one row per synced table: down-path watermark
--                   (last_sync_from_supabase + last_sync_from_supabase_id, the
--                   keyset cursor on (updated_at, id)), up-path progress, and the
--                   last error seen for the table.
--   _sync_pending   the up-path journal: since journal/001 it lives in the journal
--                   database (sql/journal/001_journal.sql). Here only an older
--                   installation's table is brought to its last layout, so that
--                   `init` can move its rows there (then it drops it).
--   _sync_log       one row per table per cycle and direction.
--
-- Idempotent: safe to apply on every `init`; upgrades the trigger-era layout
-- of the original specification's _sync_pending in place (record_id UUID ->
-- TEXT, id -> BIGINT) without losing rows, before `init` moves it.

CREATE TABLE IF NOT EXISTS _sync_metadata (
    id SERIAL PRIMARY KEY,
    table_name VARCHAR(100) UNIQUE NOT NULL,
    last_sync_from_supabase TIMESTAMPTZ,
    last_sync_to_supabase TIMESTAMPTZ,
    records_synced_down INTEGER DEFAULT 0,
    records_synced_up INTEGER DEFAULT 0,
    last_error TEXT,
    updated_at TIMESTAMPTZ DEFAULT NOW()
);
ALTER TABLE _sync_metadata ADD COLUMN IF NOT EXISTS last_sync_from_supabase_id TEXT;
ALTER TABLE _sync_metadata ADD COLUMN IF NOT EXISTS last_error_at TIMESTAMPTZ;
ALTER TABLE _sync_metadata ALTER COLUMN records_synced_down TYPE BIGINT;
ALTER TABLE _sync_metadata ALTER COLUMN records_synced_up TYPE BIGINT;

DO $$
BEGIN
    IF to_regclass('_sync_pending') IS NULL THEN
        RETURN;  -- a new installation, or the journal already moved
    END IF;
    -- The spec's trigger-era layout: widen in place.
    IF (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = '_sync_pending'::regclass AND attname = 'record_id') <> 'text' THEN
        ALTER TABLE _sync_pending ALTER COLUMN record_id TYPE TEXT USING record_id::text;
    END IF;
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = '_sync_pending'::regclass AND attname = 'id') = 'integer'::regtype THEN
        ALTER TABLE _sync_pending ALTER COLUMN id TYPE BIGINT;
    END IF;
    ALTER TABLE _sync_pending ALTER COLUMN record_id DROP NOT NULL;
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS commit_lsn PG_LSN;
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS ordinal INTEGER;
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS commit_ts TIMESTAMPTZ;
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS xid BIGINT;
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS unchanged_columns TEXT[];
    ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS parked_at TIMESTAMPTZ;
END $$;

CREATE TABLE IF NOT EXISTS _sync_log (
    id SERIAL PRIMARY KEY,
    direction VARCHAR(10) NOT NULL,  -- DOWN (Supabase->Local), UP (Local->Supabase)
    table_name VARCHAR(100),
    records_affected INTEGER,
    status VARCHAR(20),  -- SUCCESS, ERROR, PARTIAL
    error_message TEXT,
    duration_ms INTEGER,
    created_at TIMESTAMPTZ DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_sync_log_created ON _sync_log(created_at);

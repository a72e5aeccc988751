-- 001: the specification's control tables, extended for WAL capture.
--
-- Semantics:
--   _sync_metadata  one row per synced table: down-path watermark
--                   (last_sync_from_supabase + last_sync_from_supabase_id, the
--                   keyset cursor on (updated_at, id)), up-path progress, and the
--                   last error seen for the table.
--   _sync_pending   the up-path journal. The WAL consumer appends one row per
--                   captured change, in commit order, in one local transaction per
--                   decoded transaction (several decoded transactions may share one
--                   local transaction, a transaction is never split across two).
--                   (commit_lsn, ordinal) identifies a change; the pusher marks rows
--                   synced or parks them (parked_at) with their error.
--                   `data` holds the row image as JSON: column values in PostgreSQL's
--                   text form as JSON strings (json/jsonb columns embedded as JSON);
--                   TOAST values the WAL did not carry and could not be filled are
--                   absent from `data` and listed in unchanged_columns.
--   _sync_log       one row per table per cycle and direction.
--
-- Idempotent: safe to apply on every `init`, and upgrades the trigger-era
-- layout of the original specification in place (record_id UUID -> TEXT, id ->
-- BIGINT) without losing rows.

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

CREATE TABLE IF NOT EXISTS _sync_pending (
    id BIGSERIAL PRIMARY KEY,
    table_name VARCHAR(100) NOT NULL,
    record_id TEXT,
    operation VARCHAR(10) NOT NULL,  -- INSERT, UPDATE, DELETE, TRUNCATE
    data JSONB,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    synced BOOLEAN DEFAULT FALSE,
    synced_at TIMESTAMPTZ,
    error TEXT,
    retry_count INTEGER DEFAULT 0
);
DO $$
BEGIN
    -- The spec's trigger-era layout: widen in place.
    IF (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = '_sync_pending'::regclass AND attname = 'record_id') <> 'text' THEN
        ALTER TABLE _sync_pending ALTER COLUMN record_id TYPE TEXT USING record_id::text;
    END IF;
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = '_sync_pending'::regclass AND attname = 'id') = 'integer'::regtype THEN
        ALTER TABLE _sync_pending ALTER COLUMN id TYPE BIGINT;
    END IF;
END $$;
ALTER TABLE _sync_pending ALTER COLUMN record_id DROP NOT NULL;  -- TRUNCATE has no record
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS commit_lsn PG_LSN;
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS ordinal INTEGER;
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS commit_ts TIMESTAMPTZ;
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS xid BIGINT;
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS unchanged_columns TEXT[];
ALTER TABLE _sync_pending ADD COLUMN IF NOT EXISTS parked_at TIMESTAMPTZ;

-- The spec's two indexes are superseded: idx_sync_pending_unsynced by the
-- partial queue index, idx_sync_pending_table by idx_sync_pending_record
-- (same leading column). Every journal index costs capture throughput.
DROP INDEX IF EXISTS idx_sync_pending_unsynced;
DROP INDEX IF EXISTS idx_sync_pending_table;
-- The pusher's queue: unsynced, unparked rows in journal (= commit) order.
CREATE INDEX IF NOT EXISTS idx_sync_pending_queue ON _sync_pending(id)
    WHERE synced = FALSE AND parked_at IS NULL;
-- Idempotency key of a captured change.
CREATE UNIQUE INDEX IF NOT EXISTS idx_sync_pending_change ON _sync_pending(commit_lsn, ordinal);
-- Latest image / tombstone of a record (TOAST fill, delete tombstones).
CREATE INDEX IF NOT EXISTS idx_sync_pending_record ON _sync_pending(table_name, record_id, id);

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

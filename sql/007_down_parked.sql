-- 007: upstream rows the down path could not apply locally, parked one by one.
--
-- Semantics:
--   _sync_down_parked  one row per (table_name, record_id): an upstream row
--                      version the local table rejected with a data error (a
--                      local CHECK, a type mismatch: SQLSTATE class 22 or 23)
--                      while the rest of its feed page was applied. The down
--                      path finds it by bisecting the page's rows under
--                      savepoints, and writes this row in the page's local
--                      transaction, the same one that moves the feed cursor
--                      past it: the version is never lost. `version` and
--                      `row_image` (the upstream row as JSON: patient data, kept
--                      here as the journal keeps it, never logged) are what a
--                      later down cycle retries. `error` is the local error of
--                      the last attempt, `attempts` how many were made.
--                      `journal_id` is the journal's highest id when the row was
--                      parked: a local change to the record journaled after it
--                      supersedes the entry (that change goes up and upstream
--                      decides between the two), so the entry is dropped.
--                      The entry is deleted in the local transaction that
--                      applies the record (its retry, a newer version from the
--                      feed, an upstream delete), and updated when a retry or a
--                      newer version fails again.
--
-- Idempotent: safe to apply on every `init`.

CREATE TABLE IF NOT EXISTS _sync_down_parked (
    table_name VARCHAR(100) NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    row_image JSONB NOT NULL,
    error TEXT NOT NULL,
    journal_id BIGINT NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 1,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    last_attempt_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (table_name, record_id)
);

-- 005: the upstream version each local row was last downloaded at.
--
-- Semantics:
--   _sync_row_base(table_name, record_id, version_id)  written by the down path in the
--                   transaction of the page that wrote or deleted the row: the change feed's
--                   version_id of that version (sql/upstream/003_row_state.sql).
--   The pusher sends it with each change as "b" (sql/upstream/001_apply.sql): a clinic that
--   edits the version it had downloaded makes an edit, not a conflict; only a change made
--   without having seen the current upstream version goes to the conflict log as overwritten.
--   While a local change waits for upstream, the down path leaves its row, and so its base,
--   alone: the base read at push time is the one the change was made on.
--   A row never downloaded (created here, or before this version) has no base.
--
-- Idempotent.

CREATE TABLE IF NOT EXISTS _sync_row_base (
    table_name VARCHAR(100) NOT NULL,
    record_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    PRIMARY KEY (table_name, record_id)
);

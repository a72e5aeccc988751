-- journal/002: the pusher's progress is a cursor, not a mark on every row.
--
-- Applied by `init` after 001, in the journal database. Until this file the
-- pusher marked every delivered row (UPDATE ... SET synced = TRUE): one more
-- heap tuple, WAL record and index entry per change, and a queue index whose
-- dead entries every read from its start had to step over.
--
-- Semantics:
--   _sync_journal   the journal's rows (001's _sync_pending table, renamed; its
--                   indexes keep their names). Written by capture (COPY), read by
--                   the pusher in id order. Ids commit in order (journal writers
--                   hold one advisory lock), so "every row up to id N is settled"
--                   is one number.
--   _sync_push      one row: through_id, every journal row with id <= through_id
--                   is settled (delivered upstream, or parked); moved once per
--                   batch, in the transaction that records the batch's
--                   rejections. The queue is the rows above it that are neither
--                   delivered (synced) nor parked.
--   _sync_push_log  one row per move of through_id (through_id, pushed_at): when
--                   the rows up to it were delivered, for the view's synced_at
--                   and for pruning by age. Pruned with the journal.
--   Exceptions stay per row, and rare: parked rows (parked_at, error,
--                   retry_count); a row delivered while an earlier one waits to
--                   be retried (synced = TRUE, synced_at: the cursor cannot pass
--                   the earlier one yet); a row whose attempt failed (error,
--                   retry_count).
--   _sync_pending   a view with the specification's columns and meaning, for the
--                   monitoring queries (SELECT ... FROM _sync_pending WHERE synced
--                   = FALSE): synced = delivered by cursor or by mark; synced_at =
--                   the row's own mark, else when the cursor passed it. It reads
--                   the whole journal; the service itself queries the tables.
--
-- Upgrade: the cursor starts just before the first row still queued (or at the
-- last row when none is); rows after it already marked keep their marks, so
-- nothing delivered is sent again and nothing queued is skipped.
--
-- Idempotent.

DO $cvsync$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('_sync_pending') AND relkind = 'r') THEN
        ALTER TABLE _sync_pending RENAME TO _sync_journal;
    END IF;
END
$cvsync$;

-- The queue is a range of the primary key now. (Guarded rather than IF EXISTS: a fresh install
-- would otherwise show the operator a "does not exist, skipping" notice.)
DO $cvsync$
BEGIN
    IF to_regclass('idx_sync_pending_queue') IS NOT NULL THEN
        DROP INDEX idx_sync_pending_queue;
    END IF;
END
$cvsync$;

CREATE TABLE IF NOT EXISTS _sync_push (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    through_id BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
INSERT INTO _sync_push (through_id)
SELECT coalesce((SELECT min(id) - 1 FROM _sync_journal WHERE synced = FALSE AND parked_at IS NULL),
                (SELECT max(id) FROM _sync_journal), 0)
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS _sync_push_log (
    through_id BIGINT PRIMARY KEY,
    pushed_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE OR REPLACE VIEW _sync_pending AS
SELECT j.id, j.table_name, j.record_id, j.operation, j.data, j.created_at,
       (j.synced OR (j.id <= p.through_id AND j.parked_at IS NULL)) AS synced,
       coalesce(j.synced_at,
                CASE WHEN j.id <= p.through_id AND j.parked_at IS NULL THEN
                    (SELECT l.pushed_at FROM _sync_push_log l WHERE l.through_id >= j.id ORDER BY l.through_id LIMIT 1)
                END) AS synced_at,
       j.error, j.retry_count, j.commit_lsn, j.ordinal, j.commit_ts, j.xid, j.unchanged_columns, j.parked_at
FROM _sync_journal j CROSS JOIN _sync_push p;

-- 011_storage_conflicts.sql: how many times each study file's two versions
-- met under the conflict rule ([storage], src/storage/queue.rs).
--
-- _sync_files.conflicts: the number of conflicts decided for this object
-- since it entered the queue (an object that exists upstream with content
-- different from the mirror's, both changed since they were last equal);
-- last_conflict_at: when the last one was decided. Written only by the
-- storage task (Store::file_conflict), one statement, after the loser was
-- kept beside the object (`<path>.conflict-<writer>-<unix time>`, on both
-- sides). `status` shows their sum. Idempotent: columns added if missing.
ALTER TABLE _sync_files ADD COLUMN IF NOT EXISTS conflicts integer NOT NULL DEFAULT 0;
ALTER TABLE _sync_files ADD COLUMN IF NOT EXISTS last_conflict_at timestamptz;

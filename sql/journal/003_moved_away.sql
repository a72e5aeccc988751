-- journal/003: rows this server moved to another branch, waiting to be removed here.
--
-- Applied by `init` after 002, in the journal database; the service also
-- applies it itself before its first use (`JournalStore::ensure_moved_away`),
-- so an installation upgraded without running `init` again keeps working.
--
-- Semantics:
--   _sync_moved_away  one row per (table_name, row_id): a local update moved the
--                     row out of this server's [sync] branch_ids and the pusher
--                     delivered that batch. Written by the pusher in the journal
--                     transaction that settles the batch (`_sync_push` cursor and
--                     marks), so a delivered move is never forgotten by a restart
--                     or a crash; noted again (noted_at moves) when a later batch
--                     moves the row again. Read by the down path, which removes
--                     the local copy (and its via-children) once no change of the
--                     row is left unsent, then deletes the notes it handled (those
--                     whose noted_at it read) after its local transaction commits:
--                     a crash in between handles them again, which finds nothing
--                     left to remove.
--
-- Idempotent; two processes creating it at once do not fail (the loser's
-- duplicate is ignored).

DO $cvsync$
BEGIN
    IF to_regclass('_sync_moved_away') IS NULL THEN
        BEGIN
            CREATE TABLE _sync_moved_away (
                table_name TEXT        NOT NULL,
                row_id     TEXT        NOT NULL,
                noted_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (table_name, row_id)
            );
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$cvsync$;

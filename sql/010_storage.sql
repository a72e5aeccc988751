-- 010_storage.sql: the study-files mirror's queue and memory ([storage]).
--
-- _sync_files: one row per object (bucket, path) that a row of [storage] table
-- names (or named). Written only by the storage task (src/storage/queue.rs,
-- through Store operations in src/store/files.rs), one statement per change,
-- each in its own transaction: the files themselves are not in the database,
-- so a crash between a transfer and its record repeats the check on the next
-- cycle and never skips it (a download is renamed into place only complete
-- and verified; an upload is recognised by its ETag).
--   state 'pending': waiting to move; the direction is decided each cycle
--                    from what each side holds (waiting_since: since when).
--   state 'synced':  the mirror file and the object were equal, with this
--                    etag, size and the mirror file's mtime (ns); a change of
--                    either side puts the row back to 'pending'.
--   state 'gone':    no row names it since gone_at; the mirror file is removed
--                    after [storage] retention_days, then this row.
-- upload_url: the TUS upload under way for this file (with the size and mtime
-- of the file it sends), so an upload cut by a crash resumes from the offset
-- the server reports; cleared when the file is synced.
-- attempts/last_error: failures of a file that no retry fixes (too large, a
-- path Storage refuses); they stay pending and count towards the alert.
CREATE TABLE IF NOT EXISTS _sync_files (
    bucket        text        NOT NULL,
    path          text        NOT NULL,
    state         text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'synced', 'gone')),
    etag          text,
    size          bigint,
    local_mtime   bigint,
    waiting_since timestamptz NOT NULL DEFAULT now(),
    gone_at       timestamptz,
    upload_url    text,
    upload_of     text,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    PRIMARY KEY (bucket, path)
);

//! `_sync_files`: the study-files mirror's queue (`sql/010_storage.sql`,
//! `sql/011_storage_conflicts.sql`), and the reads of the `[storage] table`
//! (the object paths it names, and their rows' conflict stamp).

use super::Store;
use crate::catalog::{qualified, quote_ident};
use crate::error::Result;

/// One `_sync_files` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub bucket: String,
    pub path: String,
    /// `pending`, `synced` or `gone`.
    pub state: String,
    pub etag: Option<String>,
    pub size: Option<i64>,
    pub local_mtime: Option<i64>,
    /// Seconds since it started waiting (pending), or since its row went
    /// (gone).
    pub age_seconds: i64,
    /// The TUS upload under way, and which file version it sends
    /// (`<size>:<mtime>`).
    pub upload_url: Option<String>,
    pub upload_of: Option<String>,
    /// Its last failure no retry fixes, if any.
    pub last_error: Option<String>,
}

/// What `status` shows of the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FilesSummary {
    pub pending: i64,
    /// Bytes of the pending files whose size is known.
    pub pending_bytes: i64,
    pub oldest_waiting_seconds: Option<i64>,
    /// Pending files with a failure no retry fixes.
    pub failed: i64,
    /// Conflicts decided (a loser kept beside its object), all files.
    pub conflicts: i64,
    /// The failure of the first failed file (by bucket, path): what to fix.
    pub first_error: Option<String>,
}

impl Store<'_> {
    /// The distinct non-null values of `column` in the local `schema.table`.
    pub async fn storage_paths(&self, schema: &str, table: &str, column: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT {c}::text FROM {t} WHERE {c} IS NOT NULL AND {c}::text <> ''",
            c = quote_ident(column),
            t = qualified(schema, table)
        );
        let rows = self.client.query(&sql, &[]).await.map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The conflict stamp of the local version of a file: the latest
    /// `updated_at` of the rows naming `value` (None when the table has no
    /// such column or no row names it).
    pub async fn storage_stamp(
        &self,
        schema: &str,
        table: &str,
        column: &str,
        value: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let sql = format!(
            "SELECT max((to_jsonb(t) ->> 'updated_at')::timestamptz) FROM {tbl} t WHERE {c}::text = $1",
            c = quote_ident(column),
            tbl = qualified(schema, table)
        );
        let row = self.client.query_one(&sql, &[&value]).await.map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// A conflict was decided for this file (its loser kept beside it).
    pub async fn file_conflict(&self, bucket: &str, path: &str) -> Result<()> {
        self.client
            .execute(
                "UPDATE _sync_files SET conflicts = conflicts + 1, last_conflict_at = now() WHERE bucket = $1 AND path = $2",
                &[&bucket, &path],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Makes these objects known (pending when new, or back from gone) and
    /// every other one gone; one statement.
    pub async fn files_reconcile(&self, buckets: &[String], paths: &[String]) -> Result<()> {
        self.client
            .execute(
                "WITH named AS (SELECT * FROM unnest($1::text[], $2::text[]) AS n(bucket, path)),
                 gone AS (UPDATE _sync_files f SET state = 'gone', gone_at = now()
                          WHERE state <> 'gone' AND NOT EXISTS (SELECT 1 FROM named n WHERE n.bucket = f.bucket AND n.path = f.path))
                 INSERT INTO _sync_files (bucket, path) SELECT bucket, path FROM named
                 ON CONFLICT (bucket, path) DO UPDATE SET state = 'pending', gone_at = NULL, waiting_since = now()
                     WHERE _sync_files.state = 'gone'",
                &[&buckets, &paths],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn files_all(&self) -> Result<Vec<FileEntry>> {
        let rows = self
            .client
            .query(
                "SELECT bucket, path, state, etag, size, local_mtime,
                        extract(epoch FROM now() - CASE WHEN state = 'gone' THEN gone_at ELSE waiting_since END)::bigint,
                        upload_url, upload_of, last_error
                 FROM _sync_files ORDER BY bucket, path",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| FileEntry {
                bucket: r.get(0),
                path: r.get(1),
                state: r.get(2),
                etag: r.get(3),
                size: r.get(4),
                local_mtime: r.get(5),
                age_seconds: r.get(6),
                upload_url: r.get(7),
                upload_of: r.get(8),
                last_error: r.get(9),
            })
            .collect())
    }

    /// Both sides equal, as of this etag, size and mirror mtime.
    pub async fn file_synced(&self, bucket: &str, path: &str, etag: Option<&str>, size: i64, mtime: i64) -> Result<()> {
        self.client
            .execute(
                "UPDATE _sync_files SET state = 'synced', etag = $3, size = $4, local_mtime = $5, attempts = 0, last_error = NULL,
                     upload_url = NULL, upload_of = NULL
                 WHERE bucket = $1 AND path = $2 AND state <> 'gone'",
                &[&bucket, &path, &etag, &size, &mtime],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A side changed: the file waits to move again (from now); `size` is
    /// what will move, when known.
    pub async fn file_pending(&self, bucket: &str, path: &str, size: Option<i64>) -> Result<()> {
        self.client
            .execute(
                "UPDATE _sync_files SET state = 'pending', waiting_since = now(), size = coalesce($3, size)
                 WHERE bucket = $1 AND path = $2 AND state = 'synced'",
                &[&bucket, &path, &size],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A TUS upload was created for this file version (`of`).
    pub async fn file_upload_started(&self, bucket: &str, path: &str, url: &str, of: &str) -> Result<()> {
        self.client
            .execute("UPDATE _sync_files SET upload_url = $3, upload_of = $4 WHERE bucket = $1 AND path = $2", &[&bucket, &path, &url, &of])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A failure no retry fixes (it stays pending, counted).
    pub async fn file_failed(&self, bucket: &str, path: &str, error: &str) -> Result<()> {
        self.client
            .execute(
                "UPDATE _sync_files SET attempts = attempts + 1, last_error = $3 WHERE bucket = $1 AND path = $2",
                &[&bucket, &path, &error],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets a gone file (its mirror file was removed).
    pub async fn file_forget(&self, bucket: &str, path: &str) -> Result<()> {
        self.client
            .execute("DELETE FROM _sync_files WHERE bucket = $1 AND path = $2 AND state = 'gone'", &[&bucket, &path])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The queue as `status` shows it; zeros when the table does not exist
    /// (no `[storage]`, or `init` older than it).
    pub async fn files_summary(&self) -> Result<FilesSummary> {
        let row = self.client.query_one("SELECT to_regclass('_sync_files') IS NOT NULL", &[]).await.map_err(|e| self.err(e))?;
        if !row.get::<_, bool>(0) {
            return Ok(FilesSummary::default());
        }
        let r = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'pending'), coalesce(sum(size) FILTER (WHERE state = 'pending'), 0)::bigint,
                        extract(epoch FROM now() - min(waiting_since) FILTER (WHERE state = 'pending'))::bigint,
                        count(*) FILTER (WHERE state = 'pending' AND last_error IS NOT NULL), coalesce(sum(conflicts), 0)::bigint,
                        (SELECT last_error FROM _sync_files WHERE state = 'pending' AND last_error IS NOT NULL ORDER BY bucket, path LIMIT 1)
                 FROM _sync_files",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(FilesSummary {
            pending: r.get(0),
            pending_bytes: r.get(1),
            oldest_waiting_seconds: r.get(2),
            failed: r.get(3),
            conflicts: r.get(4),
            first_error: r.get(5),
        })
    }
}

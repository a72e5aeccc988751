//! `_sync_metadata`: per table, the down-path watermark, up- and down-path
//! progress and the last error (see the invariants in [`crate::store`]).

use super::Store;
use crate::error::Result;
use crate::upstream::Cursor;

/// One table's progress and pending work, for `status`.
#[derive(Debug, Clone)]
pub struct TableProgress {
    pub table: String,
    pub last_sync_down: Option<String>,
    pub last_sync_up: Option<String>,
    pub records_synced_down: i64,
    pub records_synced_up: i64,
    pub last_error: Option<String>,
    /// Unsynced journal rows still queued.
    pub pending: i64,
    /// Unsynced journal rows parked with an error.
    pub parked: i64,
}

impl Store<'_> {
    /// Creates the rows of `tables` that are missing (`init`).
    pub async fn ensure_table_rows(&self, tables: &[String]) -> Result<()> {
        self.client
            .execute("INSERT INTO _sync_metadata (table_name) SELECT unnest($1::text[]) ON CONFLICT (table_name) DO NOTHING", &[&tables])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Where the down path resumes reading `table`: the watermark, or
    /// `overlap_seconds` before now if that is earlier (then from that time,
    /// with no id); the start when there is no watermark.
    pub async fn down_resume_cursor(&self, table: &str, overlap_seconds: u64) -> Result<Cursor> {
        let row = self
            .client
            .query_opt(
                "SELECT CASE WHEN last_sync_from_supabase IS NULL THEN NULL
                         WHEN last_sync_from_supabase <= now() - make_interval(secs => $2) THEN last_sync_from_supabase::text
                         ELSE (now() - make_interval(secs => $2))::text END,
                    CASE WHEN last_sync_from_supabase <= now() - make_interval(secs => $2) THEN last_sync_from_supabase_id END
             FROM _sync_metadata WHERE table_name = $1",
                &[&table, &(overlap_seconds as f64)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| Cursor { updated_at: r.get(0), id: r.get(1) }).unwrap_or_default())
    }

    /// In the page transaction that applied rows of `table` up to `last`:
    /// moves the watermark to `last` unless it is already past it (keyset
    /// order on `(updated_at, id)`, the id compared as `pk_type`), counts
    /// `applied` rows, and clears the down path's own last error.
    pub async fn advance_down_watermark(&self, table: &str, pk_type: &str, last: &Cursor, applied: i64) -> Result<()> {
        let advances = format!(
            "(m.last_sync_from_supabase IS NULL OR EXCLUDED.last_sync_from_supabase > m.last_sync_from_supabase
                          OR (EXCLUDED.last_sync_from_supabase = m.last_sync_from_supabase
                              AND (m.last_sync_from_supabase_id IS NULL
                                   OR EXCLUDED.last_sync_from_supabase_id::{pk_type} > m.last_sync_from_supabase_id::{pk_type})))"
        );
        // `last_error`: only the down path's own error is cleared; an
        // up-path rejection stays visible until that row is dealt with.
        let sql = format!(
            "INSERT INTO _sync_metadata AS m (table_name, last_sync_from_supabase, last_sync_from_supabase_id, records_synced_down)
                     VALUES ($1, $2::text::timestamptz, $3, $4)
                     ON CONFLICT (table_name) DO UPDATE SET
                       last_sync_from_supabase = CASE WHEN {advances} THEN EXCLUDED.last_sync_from_supabase ELSE m.last_sync_from_supabase END,
                       last_sync_from_supabase_id = CASE WHEN {advances} THEN EXCLUDED.last_sync_from_supabase_id ELSE m.last_sync_from_supabase_id END,
                       records_synced_down = coalesce(m.records_synced_down, 0) + EXCLUDED.records_synced_down,
                       last_error = CASE WHEN m.last_error LIKE 'down: %' THEN NULL ELSE m.last_error END,
                       updated_at = now()"
        );
        self.client.execute(&sql, &[&table, &last.updated_at, &last.id, &applied]).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The down-path watermark's time (timestamptz text), None before the
    /// first page.
    pub async fn down_watermark(&self, table: &str) -> Result<Option<String>> {
        let row = self
            .client
            .query_opt("SELECT last_sync_from_supabase::text FROM _sync_metadata WHERE table_name = $1", &[&table])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// In the pusher's mark transaction: `rows` journal rows of `table` were
    /// delivered now.
    pub async fn record_synced_up(&self, table: &str, rows: i64) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO _sync_metadata (table_name, last_sync_to_supabase, records_synced_up)
                     VALUES ($1, now(), $2)
                     ON CONFLICT (table_name) DO UPDATE
                     SET last_sync_to_supabase = now(),
                         records_synced_up = coalesce(_sync_metadata.records_synced_up, 0) + EXCLUDED.records_synced_up,
                         updated_at = now()",
                &[&table, &rows],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a table-level error in `last_error`.
    pub async fn record_table_error(&self, table: &str, error: &str) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO _sync_metadata (table_name, last_error, last_error_at) VALUES ($1, $2, now())
             ON CONFLICT (table_name) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = now(), updated_at = now()",
                &[&table, &error],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Progress and pending work of `tables`, in that order (tables without
    /// a row report nothing synced).
    pub async fn table_progress(&self, tables: &[String]) -> Result<Vec<TableProgress>> {
        let rows = self
            .client
            .query(
                "SELECT t.name,
                    m.last_sync_from_supabase::text, m.last_sync_to_supabase::text,
                    coalesce(m.records_synced_down, 0)::int8, coalesce(m.records_synced_up, 0)::int8, m.last_error,
                    (SELECT count(*) FROM _sync_pending p WHERE p.table_name = t.name AND NOT p.synced AND p.parked_at IS NULL),
                    (SELECT count(*) FROM _sync_pending p WHERE p.table_name = t.name AND NOT p.synced AND p.parked_at IS NOT NULL)
             FROM unnest($1::text[]) WITH ORDINALITY t(name, n)
             LEFT JOIN _sync_metadata m ON m.table_name = t.name
             ORDER BY t.n",
                &[&tables],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| TableProgress {
                table: r.get(0),
                last_sync_down: r.get(1),
                last_sync_up: r.get(2),
                records_synced_down: r.get(3),
                records_synced_up: r.get(4),
                last_error: r.get(5),
                pending: r.get(6),
                parked: r.get(7),
            })
            .collect())
    }
}

//! `_sync_metadata`: per table, the down-path watermark, up- and down-path
//! progress and the last error (see the invariants in [`crate::store`]).

use super::{QueueCounts, Store};
use crate::error::Result;
use crate::feed::Cursor as FeedCursor;

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

    /// Progress of `tables`, in that order (tables without a row report
    /// nothing synced), with their pending work from `queue` (read from the
    /// journal database, [`JournalStore::queue_counts`](super::JournalStore::queue_counts)).
    pub async fn table_progress(&self, tables: &[String], queue: &QueueCounts) -> Result<Vec<TableProgress>> {
        let rows = self
            .client
            .query(
                "SELECT t.name,
                    m.last_sync_from_supabase::text, m.last_sync_to_supabase::text,
                    coalesce(m.records_synced_down, 0)::int8, coalesce(m.records_synced_up, 0)::int8, m.last_error
             FROM unnest($1::text[]) WITH ORDINALITY t(name, n)
             LEFT JOIN _sync_metadata m ON m.table_name = t.name
             ORDER BY t.n",
                &[&tables],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let table: String = r.get(0);
                let (pending, parked) = queue.per_table.get(&table).copied().unwrap_or((0, 0));
                TableProgress {
                    table,
                    last_sync_down: r.get(1),
                    last_sync_up: r.get(2),
                    records_synced_down: r.get(3),
                    records_synced_up: r.get(4),
                    last_error: r.get(5),
                    pending,
                    parked,
                }
            })
            .collect())
    }

    /// Where each of `tables` stands in the upstream change feed, and for a
    /// table never read through the feed but with a timestamp watermark from
    /// before (an upgrade), the time to start from: the watermark less
    /// `overlap_seconds` (timestamptz text).
    pub async fn feed_cursors(&self, tables: &[String], overlap_seconds: u64) -> Result<Vec<(String, FeedCursor, Option<String>)>> {
        let rows = self
            .client
            .query(
                "SELECT table_name::text, feed_prev, feed_target, feed_after,
                        CASE WHEN feed_prev IS NULL AND feed_target IS NULL
                             THEN (last_sync_from_supabase - make_interval(secs => $2))::text END
                 FROM _sync_metadata WHERE table_name = ANY($1)",
                &[&tables, &(overlap_seconds as f64)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), FeedCursor { prev: r.get(1), target: r.get(2), after: r.get(3) }, r.get(4))).collect())
    }

    /// In the page's transaction: moves the feed cursor of `tables` to
    /// `cursor` and counts the rows each table applied (`applied[i]` for
    /// `tables[i]`). Clears only the down path's own last error.
    pub async fn advance_feed(&self, tables: &[String], applied: &[i64], cursor: &FeedCursor) -> Result<()> {
        self.client
            .execute(
                "UPDATE _sync_metadata m SET
                   feed_prev = $3, feed_target = $4, feed_after = $5,
                   last_sync_from_supabase = now(),
                   records_synced_down = coalesce(m.records_synced_down, 0) + u.n,
                   last_error = CASE WHEN m.last_error LIKE 'down: %' THEN NULL ELSE m.last_error END,
                   updated_at = now()
                 FROM unnest($1::text[], $2::bigint[]) AS u(t, n)
                 WHERE m.table_name = u.t",
                &[&tables, &applied, &cursor.prev, &cursor.target, &cursor.after],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

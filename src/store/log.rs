//! `_sync_log`: one row per table per cycle and direction (the up path sums
//! the cycles of one `interval_seconds`), plus error rows; append-only,
//! pruned after `log_retention_days` (see [`crate::store`]). A cycle's rows
//! go in one statement: one commit in the clinic database per cycle.

use super::Store;
use crate::error::Result;

/// Which way a cycle synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Supabase → local.
    Down,
    /// Local → Supabase.
    Up,
}

impl Direction {
    /// As stored in `_sync_log.direction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "DOWN",
            Direction::Up => "UP",
        }
    }
}

/// One `_sync_log` row: a table's cycle (`table` set), or an error of the
/// whole direction (`table` None). `status` is `ERROR` when `error` is
/// set, else `SUCCESS`.
#[derive(Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    pub direction: Direction,
    pub table: Option<&'a str>,
    pub records: i32,
    pub error: Option<&'a str>,
    pub duration_ms: i32,
}

impl LogEntry<'_> {
    fn status(&self) -> &'static str {
        if self.error.is_some() { "ERROR" } else { "SUCCESS" }
    }
}

impl Store<'_> {
    /// Appends one `_sync_log` row.
    pub async fn log_sync(&self, entry: &LogEntry<'_>) -> Result<()> {
        self.log_sync_all(std::slice::from_ref(entry)).await
    }

    /// Appends `entries` in one statement (one commit: a cycle over many
    /// tables is one WAL flush, not one per table), in their order.
    pub async fn log_sync_all(&self, entries: &[LogEntry<'_>]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let directions: Vec<&str> = entries.iter().map(|e| e.direction.as_str()).collect();
        let tables: Vec<Option<&str>> = entries.iter().map(|e| e.table).collect();
        let records: Vec<i32> = entries.iter().map(|e| e.records).collect();
        let statuses: Vec<&str> = entries.iter().map(LogEntry::status).collect();
        let errors: Vec<Option<&str>> = entries.iter().map(|e| e.error).collect();
        let durations: Vec<i32> = entries.iter().map(|e| e.duration_ms).collect();
        self.client
            .execute(
                "INSERT INTO _sync_log (direction, table_name, records_affected, status, error_message, duration_ms)
                 SELECT e.d, e.t, e.r, e.s, e.m, e.ms
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::int[]) WITH ORDINALITY AS e(d, t, r, s, m, ms, o)
                 ORDER BY e.o",
                &[&directions, &tables, &records, &statuses, &errors, &durations],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes up to `batch` rows older than `retention_days`; returns how
    /// many.
    pub async fn prune_log(&self, retention_days: i32, batch: i64) -> Result<u64> {
        self.client
            .execute(
                "DELETE FROM _sync_log WHERE id IN (SELECT id FROM _sync_log WHERE created_at < now() - make_interval(days => $1) LIMIT $2)",
                &[&retention_days, &batch],
            )
            .await
            .map_err(|e| self.err(e))
    }
}

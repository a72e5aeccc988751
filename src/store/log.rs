//! `_sync_log`: one row per table per cycle and direction, plus error rows;
//! append-only, pruned after `log_retention_days` (see [`crate::store`]).

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

impl Store<'_> {
    /// Appends one `_sync_log` row.
    pub async fn log_sync(&self, entry: &LogEntry<'_>) -> Result<()> {
        let status = if entry.error.is_some() { "ERROR" } else { "SUCCESS" };
        self.client
            .execute(
                "INSERT INTO _sync_log (direction, table_name, records_affected, status, error_message, duration_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&entry.direction.as_str(), &entry.table, &entry.records, &status, &entry.error, &entry.duration_ms],
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

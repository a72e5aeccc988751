//! `_sync_history` and `_sync_backlog_history` (`sql/006_history.sql`): the
//! compact hourly history behind the status page's charts, and the parked
//! rows the page lists. Counts move in the same transaction as the progress
//! they count (see the invariants in [`crate::store`]); the backlog is a
//! sample the health check takes. Both are pruned after
//! [`HISTORY_RETENTION_DAYS`].

use super::{Direction, Store};
use crate::error::Result;

/// How long the hourly history is kept (the page shows at most 7 days).
pub const HISTORY_RETENTION_DAYS: i32 = 30;

/// One hour of history; `hour` is seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HourSample {
    pub hour: i64,
    pub rows_up: i64,
    pub rows_down: i64,
    /// The largest backlog sampled in the hour (None: no sample).
    pub max_backlog: Option<i64>,
}

/// A journal row parked with its reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedRow {
    pub id: i64,
    pub table: String,
    pub record_id: Option<String>,
    pub operation: String,
    pub error: Option<String>,
    /// timestamptz text.
    pub parked_at: Option<String>,
}

impl Store<'_> {
    /// Whether `sql/006_history.sql` was applied (an earlier version's
    /// `init` did not).
    pub async fn history_present(&self) -> Result<bool> {
        let row = self
            .client
            .query_one("SELECT to_regclass('_sync_history') IS NOT NULL AND to_regclass('_sync_backlog_history') IS NOT NULL", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// In the transaction that records the progress: `rows` more rows
    /// synced in `direction` this hour.
    pub async fn record_hourly(&self, direction: Direction, rows: i64) -> Result<()> {
        if rows <= 0 {
            return Ok(());
        }
        self.client
            .execute(
                "INSERT INTO _sync_history (hour, direction, rows) VALUES (date_trunc('hour', now()), $1, $2)
                 ON CONFLICT (hour, direction) DO UPDATE SET rows = _sync_history.rows + EXCLUDED.rows",
                &[&direction.as_str(), &rows],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The health check's sample of the journal backlog and parked rows.
    pub async fn record_backlog(&self, backlog: i64, parked: i64) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO _sync_backlog_history (hour, max_backlog, last_backlog, last_parked)
                 VALUES (date_trunc('hour', now()), $1, $1, $2)
                 ON CONFLICT (hour) DO UPDATE SET max_backlog = GREATEST(_sync_backlog_history.max_backlog, EXCLUDED.max_backlog),
                     last_backlog = EXCLUDED.last_backlog, last_parked = EXCLUDED.last_parked",
                &[&backlog, &parked],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The last `hours` hours up to the current one, oldest first, one
    /// sample per hour (hours without activity are zero, without a backlog
    /// sample None).
    pub async fn hourly_history(&self, hours: i32) -> Result<Vec<HourSample>> {
        let rows = self
            .client
            .query(
                "WITH span AS (
                    SELECT generate_series(date_trunc('hour', now()) - make_interval(hours => $1 - 1), date_trunc('hour', now()),
                                           interval '1 hour') AS hour)
                 SELECT extract(epoch FROM s.hour)::int8,
                        coalesce(sum(h.rows) FILTER (WHERE h.direction = 'UP'), 0)::int8,
                        coalesce(sum(h.rows) FILTER (WHERE h.direction = 'DOWN'), 0)::int8,
                        max(b.max_backlog)
                 FROM span s
                 LEFT JOIN _sync_history h ON h.hour = s.hour
                 LEFT JOIN _sync_backlog_history b ON b.hour = s.hour
                 GROUP BY s.hour ORDER BY s.hour",
                &[&hours],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| HourSample { hour: r.get(0), rows_up: r.get(1), rows_down: r.get(2), max_backlog: r.get(3) }).collect())
    }

    /// Deletes history older than [`HISTORY_RETENTION_DAYS`]; returns how
    /// many rows.
    pub async fn prune_history(&self) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM _sync_history WHERE hour < now() - make_interval(days => $1)",
            "DELETE FROM _sync_backlog_history WHERE hour < now() - make_interval(days => $1)",
        ] {
            n += self.client.execute(sql, &[&HISTORY_RETENTION_DAYS]).await.map_err(|e| self.err(e))?;
        }
        Ok(n)
    }
}

//! `_sync_down_parked` (`sql/007_down_parked.sql`): upstream row versions the
//! local table rejected, parked so the rest of their page (and the feed
//! cursor) moves on, retried by later down cycles ([`crate::down`]). Every
//! write happens in the down path's page (or retry) transaction.

use super::Store;
use crate::error::Result;

/// One parked upstream row version.
#[derive(Debug, Clone)]
pub struct DownParked {
    pub table: String,
    pub record_id: String,
    pub version: i64,
    /// The upstream row as JSON text.
    pub row: String,
}

/// A row to park: its key, upstream version, image and the local error.
#[derive(Debug, Clone, Copy)]
pub struct ToPark<'a> {
    pub record_id: &'a str,
    pub version: i64,
    pub row: &'a str,
    pub error: &'a str,
}

/// Parked rows of one table, for `status`.
#[derive(Debug, Clone, Default)]
pub struct DownParkedSummary {
    pub count: i64,
    /// The error of the row parked first.
    pub first_error: Option<String>,
    /// Its key.
    pub first_record_id: Option<String>,
}

impl Store<'_> {
    /// Whether `sql/007_down_parked.sql` was applied (an earlier version's
    /// `init` did not).
    pub async fn down_parked_present(&self) -> Result<bool> {
        let row = self.client.query_one("SELECT to_regclass('_sync_down_parked') IS NOT NULL", &[]).await.map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Parks `rows` of `table` (or records another failed attempt of an
    /// entry, with the newer version and error), `journal_id` being
    /// [`JournalStore::journal_high_water`](super::JournalStore::journal_high_water) read after capture caught up.
    pub async fn park_down(&self, table: &str, rows: &[ToPark<'_>], journal_id: i64) -> Result<()> {
        for r in rows {
            self.client
                .execute(
                    "INSERT INTO _sync_down_parked (table_name, record_id, version, row_image, error, journal_id)
                     VALUES ($1, $2, $3, $4::text::jsonb, $5, $6)
                     ON CONFLICT (table_name, record_id) DO UPDATE SET
                        version = EXCLUDED.version, row_image = EXCLUDED.row_image, error = EXCLUDED.error,
                        journal_id = EXCLUDED.journal_id, attempts = _sync_down_parked.attempts + 1, last_attempt_at = now()",
                    &[&table, &r.record_id, &r.version, &r.row, &r.error, &journal_id],
                )
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Removes the entries of `record_ids` of `table` (the records were
    /// applied); returns how many there were.
    pub async fn clear_down_parked(&self, table: &str, record_ids: &[&str]) -> Result<u64> {
        if record_ids.is_empty() {
            return Ok(0);
        }
        self.client
            .execute("DELETE FROM _sync_down_parked WHERE table_name = $1 AND record_id = ANY($2)", &[&table, &record_ids])
            .await
            .map_err(|e| self.err(e))
    }

    /// Every entry as (table, record id, journal id), for
    /// [`JournalStore::superseded`](super::JournalStore::superseded).
    pub async fn down_parked_marks(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = self
            .client
            .query("SELECT table_name::text, record_id, journal_id FROM _sync_down_parked", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Drops the entries a later local change superseded; returns how many.
    pub async fn drop_down_parked(&self, entries: &[(String, String)]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let tables: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let ids: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
        self.client
            .execute(
                "DELETE FROM _sync_down_parked d USING unnest($1::text[], $2::text[]) e(t, r)
                 WHERE d.table_name = e.t AND d.record_id = e.r",
                &[&tables, &ids],
            )
            .await
            .map_err(|e| self.err(e))
    }

    /// The parked rows of `tables`, by table then key.
    pub async fn down_parked(&self, tables: &[String]) -> Result<Vec<DownParked>> {
        let rows = self
            .client
            .query(
                "SELECT table_name::text, record_id, version, row_image::text FROM _sync_down_parked
                 WHERE table_name = ANY($1) ORDER BY table_name, record_id",
                &[&tables],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| DownParked { table: r.get(0), record_id: r.get(1), version: r.get(2), row: r.get(3) }).collect())
    }

    /// Per table of `tables` (in that order): parked rows and the first one's
    /// error; empty when `sql/007_down_parked.sql` was not applied yet.
    pub async fn down_parked_summary(&self, tables: &[String]) -> Result<Vec<DownParkedSummary>> {
        if !self.down_parked_present().await? {
            return Ok(vec![DownParkedSummary::default(); tables.len()]);
        }
        let rows = self
            .client
            .query(
                "SELECT (SELECT count(*) FROM _sync_down_parked d WHERE d.table_name = t.name)::int8, f.error, f.record_id
                 FROM unnest($1::text[]) WITH ORDINALITY t(name, n)
                 LEFT JOIN LATERAL (SELECT error, record_id FROM _sync_down_parked d WHERE d.table_name = t.name
                                    ORDER BY parked_at, record_id LIMIT 1) f ON true
                 ORDER BY t.n",
                &[&tables],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| DownParkedSummary { count: r.get(0), first_error: r.get(1), first_record_id: r.get(2) }).collect())
    }
}

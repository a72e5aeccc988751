//! Branch scope on the up path ([`crate::scope`]): journaled changes of rows
//! outside this server's branches are held back — parked in the journal
//! with the reason, which `status` lists — instead of being sent. Runs in the
//! pusher before a batch is built, on that batch's journal rows only: the
//! clinic's database judges the images (the scope may follow foreign keys),
//! the journal database parks them.

use super::{JournalStore, Store};
use crate::error::Result;

/// The `error` text of a change held back by the branch scope.
pub const HELD_BACK: &str = "not sent: the row belongs to a branch outside this server's [sync] branch_ids \
     (written here by mistake?); fix or delete it locally, or add its branch to branch_ids";

impl Store<'_> {
    /// Of the row images `images` (journal id, image as JSON text) of a
    /// table, the ids whose row is outside the scope (`in_scope`: a boolean
    /// SQL expression on the image as row `d` of `qualified`, its branches
    /// bound as `$3`). Evaluated here, in the clinic's database, because the
    /// scope may follow foreign keys into other tables; the journal parks
    /// them ([`JournalStore::hold_back`]).
    pub async fn out_of_scope(&self, qualified: &str, in_scope: &str, branches: &[String], images: &[(i64, &str)]) -> Result<Vec<i64>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = images.iter().map(|(i, _)| *i).collect();
        let data: Vec<&str> = images.iter().map(|(_, d)| *d).collect();
        let sql = format!(
            "SELECT u.i FROM unnest($1::int8[], $2::text[]) u(i, img)
             WHERE NOT EXISTS (SELECT 1 FROM jsonb_populate_record(NULL::{qualified}, u.img::jsonb) d WHERE {in_scope})"
        );
        let rows = self.client.query(&sql, &[&ids, &data, &branches]).await.map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl JournalStore<'_> {
    /// Parks, among the unsynced journal rows `ids` of `table`, those in
    /// `out` (inserts of rows outside the scope, [`Store::out_of_scope`])
    /// and every later change of a row already held back. Returns the rows
    /// parked.
    pub async fn hold_back(&self, table: &str, ids: &[i64], out: &[i64]) -> Result<u64> {
        self.client
            .execute(
                "UPDATE _sync_journal p SET parked_at = now(), error = $4, retry_count = coalesce(p.retry_count, 0) + 1
                 WHERE p.id = ANY($1) AND p.table_name = $2 AND NOT p.synced AND p.parked_at IS NULL
                   AND (p.id = ANY($3)
                        OR EXISTS (SELECT 1 FROM _sync_journal q
                                   WHERE q.table_name = p.table_name AND q.record_id = p.record_id AND q.id < p.id
                                     AND q.parked_at IS NOT NULL AND NOT q.synced AND q.error = $4))",
                &[&ids, &table, &out, &HELD_BACK],
            )
            .await
            .map_err(|e| self.err(e))
    }
}

/// `_sync_state` key of the branch set the down path last read for:
/// a JSON array of branch ids, or `"*"` (unscoped).
pub const BRANCH_SET_KEY: &str = "branch_ids";

impl Store<'_> {
    /// The branch set recorded under [`BRANCH_SET_KEY`], if any.
    pub async fn branch_set(&self) -> Result<Option<String>> {
        let row =
            self.client.query_opt("SELECT value FROM _sync_state WHERE key = $1", &[&BRANCH_SET_KEY]).await.map_err(|e| self.err(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Puts `tables` back at the start of the change feed (no window, no
    /// upgrade watermark): their next read is a first download, which
    /// brings the rows of branches added to the scope.
    pub async fn restart_feed(&self, tables: &[String]) -> Result<u64> {
        self.client
            .execute(
                "UPDATE _sync_metadata SET feed_prev = NULL, feed_target = NULL, feed_after = 0,
                    last_sync_from_supabase = NULL, updated_at = now()
                 WHERE table_name = ANY($1)",
                &[&tables],
            )
            .await
            .map_err(|e| self.err(e))
    }
}

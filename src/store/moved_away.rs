//! `_sync_moved_away` (`sql/journal/003_moved_away.sql`, journal database):
//! rows a local update moved out of this server's branches, delivered
//! upstream, whose local copy the down path still has to remove
//! ([`crate::down::remove_moved_away`]). The note must outlive the process
//! that delivered the move: the feed never returns a clinic's own writes, so
//! a note lost to a restart or a crash would leave the row here for good.
//! The pusher writes the notes in the journal transaction that settles the
//! batch ([`JournalStore::note_moved_away`]); the down path reads them, and
//! deletes those it handled after its local transaction commits
//! ([`JournalStore::forget_moved_away`]).

use super::JournalStore;
use crate::error::Result;

/// The file that creates the table (also applied by `init`).
const SQL: &str = include_str!("../../sql/journal/003_moved_away.sql");

/// One note: a row moved away, and when it was noted (as text, to delete
/// exactly this note and not a later one of the same row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAway {
    pub table: String,
    pub row_id: String,
    pub noted_at: String,
}

impl JournalStore<'_> {
    /// Creates `_sync_moved_away` when an installation upgraded without
    /// running `init` again lacks it (one catalog lookup when it exists).
    pub async fn ensure_moved_away(&self) -> Result<()> {
        self.client.batch_execute(SQL).await.map_err(|e| self.err(e))
    }

    /// Notes rows (table, key) moved out of the scope, in the caller's
    /// transaction (the one that settles the batch that delivered them);
    /// creates the table first if an upgrade without `init` lacks it (every
    /// pusher, `resync`'s too, goes through here). Returns how many were
    /// noted.
    pub async fn note_moved_away(&self, moved: &[(String, String)]) -> Result<u64> {
        if moved.is_empty() {
            return Ok(0);
        }
        self.ensure_moved_away().await?;
        let (tables, keys): (Vec<&str>, Vec<&str>) = moved.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
        self.client
            .execute(
                "INSERT INTO _sync_moved_away (table_name, row_id)
                 SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (table_name, row_id) DO UPDATE SET noted_at = clock_timestamp()",
                &[&tables, &keys],
            )
            .await
            .map_err(|e| self.err(e))
    }

    /// Every note, oldest first.
    pub async fn moved_away(&self) -> Result<Vec<MovedAway>> {
        let rows = self
            .client
            .query("SELECT table_name, row_id, noted_at::text FROM _sync_moved_away ORDER BY noted_at", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| MovedAway { table: r.get(0), row_id: r.get(1), noted_at: r.get(2) }).collect())
    }

    /// Deletes the notes handled, unless a later batch noted the row again
    /// since they were read.
    pub async fn forget_moved_away(&self, handled: &[MovedAway]) -> Result<u64> {
        if handled.is_empty() {
            return Ok(0);
        }
        let tables: Vec<&str> = handled.iter().map(|m| m.table.as_str()).collect();
        let keys: Vec<&str> = handled.iter().map(|m| m.row_id.as_str()).collect();
        let at: Vec<&str> = handled.iter().map(|m| m.noted_at.as_str()).collect();
        self.client
            .execute(
                "DELETE FROM _sync_moved_away m USING unnest($1::text[], $2::text[], $3::text[]) h(t, k, at)
                 WHERE m.table_name = h.t AND m.row_id = h.k AND m.noted_at::text = h.at",
                &[&tables, &keys, &at],
            )
            .await
            .map_err(|e| self.err(e))
    }

    /// Of `keys` of `table`, those with a journaled change not delivered
    /// yet: queued after the cursor, or parked (a parked change is unsent,
    /// unlike in [`JournalStore::pending_keys`]). One query for all keys.
    pub async fn unsent_keys(&self, table: &str, keys: &[String]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .client
            .query(
                "SELECT DISTINCT record_id FROM _sync_journal
                 WHERE table_name = $1 AND record_id = ANY($2) AND NOT synced
                   AND (parked_at IS NOT NULL OR id > (SELECT through_id FROM _sync_push))",
                &[&table, &keys],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

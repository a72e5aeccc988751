//! `_sync_capture`: the WAL consumer's durable progress, one row per slot
//! (see the invariants in [`crate::store`]).

use postgres_types::PgLsn;

use super::Store;
use crate::error::Result;
use crate::lsn::Lsn;

impl Store<'_> {
    /// Creates the slot's row if it is missing (`init`).
    pub async fn ensure_capture_row(&self, slot: &str) -> Result<()> {
        self.client
            .execute("INSERT INTO _sync_capture (slot_name) VALUES ($1) ON CONFLICT (slot_name) DO NOTHING", &[&slot])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The commit LSN of the last transaction known to be journaled.
    pub async fn journaled_lsn(&self, slot: &str) -> Result<Lsn> {
        let row = self
            .client
            .query_opt("SELECT journaled_lsn FROM _sync_capture WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| Lsn::from(r.get::<_, PgLsn>(0))).unwrap_or(Lsn::ZERO))
    }

    /// Records, in the transaction that committed the journal rows, the
    /// last journaled commit LSN and the end LSN to confirm to the slot.
    /// Neither ever moves back.
    pub async fn record_journaled(&self, slot: &str, journaled: Lsn, end: Lsn) -> Result<()> {
        let j = PgLsn::from(journaled);
        let e = PgLsn::from(end);
        self.client
            .execute(
                "INSERT INTO _sync_capture (slot_name, journaled_lsn, confirmed_end_lsn, updated_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (slot_name) DO UPDATE
                 SET journaled_lsn = GREATEST(_sync_capture.journaled_lsn, EXCLUDED.journaled_lsn),
                     confirmed_end_lsn = GREATEST(_sync_capture.confirmed_end_lsn, EXCLUDED.confirmed_end_lsn),
                     updated_at = now()",
                &[&slot, &j, &e],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// When `init --upload-existing` journaled the rows that predate the
    /// slot (timestamptz text), None if it never did.
    pub async fn uploaded_existing_at(&self, slot: &str) -> Result<Option<String>> {
        let row = self
            .client
            .query_one("SELECT uploaded_existing_at::text FROM _sync_capture WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Notes, in the transaction that journaled them, that the existing rows
    /// were uploaded.
    pub async fn mark_uploaded_existing(&self, slot: &str) -> Result<()> {
        self.client
            .execute("UPDATE _sync_capture SET uploaded_existing_at = now() WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// What `replay` may start from: the oldest commit LSN still in the
    /// journal, and the highest one pruned away.
    pub async fn replay_bounds(&self, slot: &str) -> Result<(Option<Lsn>, Option<Lsn>)> {
        let r = self
            .client
            .query_one(
                "SELECT (SELECT min(commit_lsn) FROM _sync_pending),
                    (SELECT pruned_through_lsn FROM _sync_capture WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok((r.get::<_, Option<PgLsn>>(0).map(Lsn::from), r.get::<_, Option<PgLsn>>(1).map(Lsn::from)))
    }

    /// For `status`: the last journaled commit LSN and the oldest LSN the
    /// journal can replay from, as text.
    pub async fn journal_positions(&self, slot: &str) -> Result<(Option<String>, Option<String>)> {
        let r = self
            .client
            .query_one(
                "SELECT (SELECT journaled_lsn::text FROM _sync_capture WHERE slot_name = $1),
                    (SELECT min(commit_lsn)::text FROM _sync_pending)",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok((r.get(0), r.get(1)))
    }
}

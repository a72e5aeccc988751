//! `_sync_capture`: the WAL consumer's durable progress, one row per slot
//! (see the invariants in [`crate::store`]).

use postgres_types::PgLsn;

use super::{JournalStore, Store};
use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;

/// How long [`Store::settled_position`] waits for transactions in progress.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Store<'_> {
    /// A position in this clinic's commit order for changes the service
    /// makes up itself (rows journaled by `init`, versions sent by `verify
    /// --repair`): the local WAL insert position, returned once every
    /// transaction in progress at that moment has ended. A snapshot taken
    /// afterwards then holds every commit before the position, and every
    /// commit it lacks comes after it — so upstream orders the made-up
    /// version correctly against each captured change of the same row.
    pub async fn settled_position(&self) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_insert_lsn(), pg_snapshot_xmax(pg_current_snapshot())::text", &[])
            .await
            .map_err(|e| self.err(e))?;
        let (lsn, xmax): (PgLsn, String) = (row.get(0), row.get(1));
        let started = std::time::Instant::now();
        loop {
            let settled: bool = self
                .client
                .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8", &[&xmax])
                .await
                .map_err(|e| self.err(e))?
                .get(0);
            if settled {
                return Ok(Lsn::from(lsn));
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                return Err(SyncError::new(
                    ErrorKind::Busy,
                    format!("a local transaction has been open for more than {} s", SETTLE_TIMEOUT.as_secs()),
                )
                .with_hint("find it in pg_stat_activity (state 'idle in transaction' or a long query), let it finish or end it, then run the command again"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl JournalStore<'_> {
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
                "SELECT (SELECT min(commit_lsn) FROM _sync_journal),
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
                    (SELECT min(commit_lsn)::text FROM _sync_journal)",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok((r.get(0), r.get(1)))
    }

    /// The cluster the capture bookkeeping of `slot` describes (None before
    /// the first `init` of this version) and the current capture epoch.
    /// Read through `to_jsonb` so that the control tables of an earlier
    /// version (without these columns) answer None and epoch 1 instead of an
    /// error, and the caller can say "upgrade".
    pub async fn capture_identity(&self, slot: &str) -> Result<Option<(Option<String>, i32)>> {
        let row = self
            .client
            .query_opt(
                "SELECT to_jsonb(c) ->> 'system_identifier', coalesce((to_jsonb(c) ->> 'epoch')::int, 1)
                 FROM _sync_capture c WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Ties the bookkeeping of `slot` to the cluster `sysid` (`init`). When
    /// `fresh_positions` (the slot was just created, or the bookkeeping came
    /// from another cluster) a new epoch starts at the next journal id (from
    /// the id sequence: the journal may have been pruned below ids issued in
    /// the previous epoch, which must stay before this one) and
    /// journaled/confirmed LSNs restart from 0/0: LSNs of the old slot or
    /// cluster say nothing about the new one. The first call of this version
    /// on an existing installation only records the cluster and opens epoch
    /// 1 for the journal as it is — unless the clinic's database says it
    /// already wrote under epoch `known` (a journal database created afresh
    /// for a clinic database moved without it): then epoch `known + 1`
    /// opens, so nothing captured now is ordered before what was sent then.
    /// Returns the epoch in force.
    pub async fn tie_to_cluster(&self, slot: &str, sysid: &str, fresh_positions: bool, known: Option<i32>) -> Result<i32> {
        let row = self
            .client
            .query_one(
                "WITH cur AS (SELECT epoch, system_identifier FROM _sync_capture WHERE slot_name = $1),
                      first AS (SELECT NOT EXISTS (SELECT 1 FROM _sync_epoch) AS yes),
                      nxt AS (SELECT CASE WHEN (SELECT yes FROM first) THEN greatest((SELECT epoch FROM cur), coalesce($4 + 1, 0))
                                          WHEN $3 OR (SELECT system_identifier FROM cur) IS DISTINCT FROM $2
                                               THEN (SELECT greatest(max(epoch), (SELECT epoch FROM cur)) + 1 FROM _sync_epoch)
                                          ELSE (SELECT epoch FROM cur) END AS epoch),
                      ins AS (INSERT INTO _sync_epoch (epoch, first_journal_id, system_identifier)
                              SELECT nxt.epoch,
                                     CASE WHEN (SELECT yes FROM first) THEN 0
                                          ELSE nextval(pg_get_serial_sequence('_sync_journal', 'id')) END,
                                     $2
                              FROM nxt ON CONFLICT (epoch) DO NOTHING RETURNING epoch)
                 UPDATE _sync_capture c SET
                   system_identifier = $2,
                   epoch = (SELECT epoch FROM nxt),
                   journaled_lsn = CASE WHEN (SELECT epoch FROM nxt) <> c.epoch OR (NOT (SELECT yes FROM first) AND $3)
                                        THEN '0/0' ELSE c.journaled_lsn END,
                   confirmed_end_lsn = CASE WHEN (SELECT epoch FROM nxt) <> c.epoch OR (NOT (SELECT yes FROM first) AND $3)
                                            THEN '0/0' ELSE c.confirmed_end_lsn END,
                   updated_at = now()
                 WHERE c.slot_name = $1
                 RETURNING c.epoch",
                &[&slot, &sysid, &fresh_positions, &known],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Every capture epoch with the first journal id it wrote, oldest first.
    pub async fn epochs(&self) -> Result<Vec<(i32, i64)>> {
        let rows = self
            .client
            .query("SELECT epoch, first_journal_id FROM _sync_epoch ORDER BY first_journal_id, epoch", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl Store<'_> {
    /// The cluster this database runs on now (`pg_control_system()`).
    pub async fn system_identifier(&self) -> Result<String> {
        let row = self.client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).await.map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}

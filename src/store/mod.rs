//! The one owner of the control tables: every SQL statement on a `_sync_*`
//! table lives in this module, as a named operation on [`Store`] (or, where
//! the statement must be composed into a user-table statement, as a named
//! SQL fragment such as [`tombstone_after`]). The schema itself is
//! `sql/00*.sql`, applied by [`Store::install_schema`].
//!
//! Invariants, per table (who writes it, and in which transaction):
//!
//! - `_sync_pending`, the journal ([`pending`]). Rows are written only by
//!   [`Store::journal_batch`] (binary COPY): by capture, inside the local
//!   transaction that also moves `_sync_capture.journaled_lsn`
//!   ([`Store::record_journaled`]), one decoded transaction never split
//!   across two local ones; and by `init --upload-existing`, inside the
//!   transaction that also sets `uploaded_existing_at` (those rows have no
//!   commit position). `(commit_lsn, ordinal)` identifies a captured change.
//!   The pusher reads the queue (unsynced, unparked) in `id` order
//!   ([`Store::journal_rows`]) and marks rows synced ([`Store::mark_synced`])
//!   only after upstream confirmed them, in the same local transaction as the
//!   table's up-path progress ([`Store::record_synced_up`]) and its
//!   rejections ([`Store::record_failure`], which parks). A `DELETE` row is a
//!   tombstone for `verify --repair` ([`tombstone_after`],
//!   [`Store::latest_tombstone`]). Synced rows past retention are pruned
//!   ([`Store::prune_journal`]) in the same statement that moves
//!   `_sync_capture.pruned_through_lsn`.
//! - `_sync_capture` ([`capture`]), one row per slot. `journaled_lsn` and
//!   `confirmed_end_lsn` only grow within a capture epoch, and
//!   `journaled_lsn` moves in the same transaction as the journal rows it
//!   covers: capture skips re-sent transactions at or below it, which is
//!   what makes capture idempotent (pruning the journal never re-opens a
//!   gap). `pruned_through_lsn` moves with pruning; `replay` refuses to
//!   start at or below it. `system_identifier` names the cluster whose LSNs
//!   these are; `init` starts a new `epoch` (and restarts both LSNs from
//!   0/0) when it creates the slot or finds another cluster's bookkeeping
//!   ([`Store::tie_to_cluster`]); `_sync_epoch` records where each epoch's
//!   journal ids start, so every journal row keeps its position.
//! - `_sync_metadata` ([`metadata`]), one row per synced table (created by
//!   `init`). The down path's feed cursor (`feed_prev`, `feed_target`,
//!   `feed_after`) moves only in the page transaction that applied the
//!   page's rows ([`Store::advance_feed`]); the up-path columns move in the
//!   pusher's mark transaction. `last_error` holds the latest table-level
//!   error ([`Store::record_table_error`]); a successful page clears only the
//!   down path's own (`down: …`) error.
//! - `_sync_log` ([`log`]): append-only, one row per table per cycle and
//!   direction (plus error rows), pruned after `log_retention_days`.
//! - `_sync_history` ([`history`]): rows synced per UTC hour and direction,
//!   incremented in the transaction that records that progress (the
//!   pusher's mark transaction, the down path's page transaction);
//!   `_sync_backlog_history`: the health check's hourly backlog sample. Both
//!   pruned after 30 days.
//! - `_sync_down_parked` ([`down_parked`]): upstream row versions the local
//!   table rejected, one per record, written in the down path's page
//!   transaction that moves the cursor past them; deleted in the transaction
//!   that applies the record, dropped when a later local change supersedes
//!   them.
//! - `_sync_files` ([`files`]): the study-files mirror's queue, written
//!   only by the storage task, one statement per change (the files are not
//!   in the database; a crash repeats a check, never skips one).
//! - `_sync_state` ([`state`]): what the running service knows that `status`
//!   (another process) should show; one row per key, upserted by the health
//!   check on every run, so it describes the present, not a history.

pub mod base;
pub mod capture;
pub mod down_parked;
pub mod files;
pub mod history;
pub mod log;
pub mod metadata;
pub mod pending;
pub mod state;

use tokio_postgres::Client;

use crate::error::{At, Result, SyncError};

pub use down_parked::{DownParked, DownParkedSummary, ToPark};
pub use history::{HourSample, ParkedRow};
pub use log::{Direction, LogEntry};
pub use metadata::TableProgress;
pub use pending::{JournalRow, JournalSummary, Operation, Queued, ReplayStat, Source, tombstone_after};
pub use state::StateEntry;

/// The local control schema, in order (`init` applies it; idempotent).
pub const SCHEMA: &[(&str, &str)] = &[
    ("001_control_tables.sql", include_str!("../../sql/001_control_tables.sql")),
    ("002_capture_state.sql", include_str!("../../sql/002_capture_state.sql")),
    ("003_service_state.sql", include_str!("../../sql/003_service_state.sql")),
    ("004_writer_state.sql", include_str!("../../sql/004_writer_state.sql")),
    ("005_row_base.sql", include_str!("../../sql/005_row_base.sql")),
    ("006_history.sql", include_str!("../../sql/006_history.sql")),
    ("007_down_parked.sql", include_str!("../../sql/007_down_parked.sql")),
    ("010_storage.sql", include_str!("../../sql/010_storage.sql")),
];

/// The control tables as one component sees them: its local connection,
/// and the label its database errors carry (e.g. "local database
/// (pusher)"). Cheap to make; make one where needed.
#[derive(Clone)]
pub struct Store<'c> {
    client: &'c Client,
    at: At,
}

impl<'c> Store<'c> {
    pub fn new(client: &'c Client, at: At) -> Self {
        Store { client, at }
    }

    /// The connection, for the caller's own statements in the same
    /// transaction (BEGIN/COMMIT stay with the caller).
    pub fn client(&self) -> &'c Client {
        self.client
    }

    fn err(&self, e: tokio_postgres::Error) -> SyncError {
        SyncError::from_pg(self.at.clone(), &e)
    }

    /// Applies [`SCHEMA`], each file in its own transaction.
    pub async fn install_schema(&self) -> Result<()> {
        for (name, sql) in SCHEMA {
            let wrapped = format!("BEGIN;\n{sql}\nCOMMIT;");
            self.client
                .batch_execute(&wrapped)
                .await
                .map_err(|e| SyncError::from_pg(self.at.doing(format_args!("applying sql/{name}")), &e))?;
        }
        Ok(())
    }

    /// Whether `init` created the four control tables `doctor` checks.
    pub async fn control_tables_present(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('_sync_pending') IS NOT NULL AND to_regclass('_sync_metadata') IS NOT NULL
                    AND to_regclass('_sync_log') IS NOT NULL AND to_regclass('_sync_capture') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Whether the database is ready for the service: the journal and
    /// capture tables exist and the slot does.
    pub async fn initialized(&self, slot: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('_sync_pending') IS NOT NULL AND to_regclass('_sync_capture') IS NOT NULL
                    AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}

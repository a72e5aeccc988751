//! The one owner of the control tables: every SQL statement on a `_sync_*`
//! table lives in this module, as a named operation on [`Store`] (the
//! clinic's database) or [`JournalStore`] (the journal database beside it),
//! or, where a statement on a clinic table needs what the journal knows, as
//! a named SQL fragment over a parameter the journal filled (such as
//! [`tombstoned`]). The schema itself is `sql/00*.sql`
//! ([`Store::install_schema`]) and `sql/journal/00*.sql`
//! ([`JournalStore::install_schema`]).
//!
//! Invariants, per table (who writes it, and in which transaction):
//!
//! - `_sync_journal`, the journal ([`pending`], journal database; the view
//!   `_sync_pending` shows it with the specification's columns). Rows are
//!   written only by [`JournalStore::journal_batch`] (binary COPY): by
//!   capture, inside the transaction that also moves
//!   `_sync_capture.journaled_lsn` ([`JournalStore::record_journaled`]), one
//!   decoded transaction never split across two; and by `init
//!   --upload-existing` (those rows carry a settled position). `(commit_lsn,
//!   ordinal)` identifies a captured change. The pusher reads the queue
//!   (after the cursor `_sync_push.through_id`, neither delivered nor parked)
//!   in `id` order ([`JournalStore::journal_rows`]) and moves the cursor
//!   once per batch ([`JournalStore::settle`]) only after upstream confirmed
//!   the batch, in one transaction with its rejections
//!   ([`JournalStore::record_failure`], which parks; parked rows and rows
//!   delivered while an earlier one waits are the per-row exceptions); the clinic database's
//!   up-path statistics ([`Store::record_synced_up`], the hourly history)
//!   follow in a transaction of their own, best effort. A `DELETE` row is a
//!   tombstone for the down path ([`JournalStore::tombstones`] →
//!   [`tombstoned`]) and `verify --repair` ([`JournalStore::latest_tombstone`]).
//!   Rows the cursor passed longer ago than retention (`_sync_push_log`) are pruned ([`JournalStore::prune_journal`])
//!   in the same statement that moves `_sync_capture.pruned_through_lsn`. An
//!   older installation's journal in the clinic's database is moved here by
//!   `init` ([`journal_move`]).
//! - `_sync_capture` ([`capture`], journal database), one row per slot. `journaled_lsn` and
//!   `confirmed_end_lsn` only grow within a capture epoch, and
//!   `journaled_lsn` moves in the same transaction as the journal rows it
//!   covers: capture skips re-sent transactions at or below it, which is
//!   what makes capture idempotent (pruning the journal never re-opens a
//!   gap). `pruned_through_lsn` moves with pruning; `replay` refuses to
//!   start at or below it. `system_identifier` names the cluster whose LSNs
//!   these are; `init` starts a new `epoch` (and restarts both LSNs from
//!   0/0) when it creates the slot or finds another cluster's bookkeeping
//!   ([`JournalStore::tie_to_cluster`]); `_sync_epoch` records where each epoch's
//!   journal ids start, so every journal row keeps its position.
//! - `_sync_moved_away` ([`moved_away`], journal database): rows a local
//!   update moved to another branch, noted in the transaction that settles
//!   the batch delivering the move; deleted by the down path after it
//!   removed the local copy.
//! - `_sync_metadata` ([`metadata`]), one row per synced table (created by
//!   `init`). The down path's feed cursor (`feed_prev`, `feed_target`,
//!   `feed_after`) moves only in the page transaction that applied the
//!   page's rows ([`Store::advance_feed`]); the up-path columns move in the
//!   pusher's mark transaction. `last_error` holds the latest table-level
//!   error ([`Store::record_table_error`]); a successful page clears only the
//!   down path's own (`down: …`) error.
//! - `_sync_log` ([`log`]): append-only, one row per table per cycle and
//!   direction (up: per `interval_seconds` of cycles; plus error rows),
//!   pruned after `log_retention_days`.
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
pub mod branch_hold;
pub mod capture;
pub mod down_parked;
pub mod files;
pub mod history;
pub mod journal_move;
pub mod log;
pub mod metadata;
pub mod moved_away;
pub mod pending;
pub mod state;

use tokio_postgres::Client;

use crate::error::{At, Result, SyncError};

pub use down_parked::{DownParked, DownParkedSummary, ToPark};
pub use history::{HourSample, ParkedRow};
pub use log::{Direction, LogEntry};
pub use metadata::TableProgress;
pub use moved_away::MovedAway;
pub use pending::{JournalRow, JournalSummary, Operation, QueueCounts, Queued, ReplayStat, Source, tombstoned};
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
    ("011_storage_conflicts.sql", include_str!("../../sql/011_storage_conflicts.sql")),
];

/// The advisory lock key of the journal's writers (the journal database is
/// the service's own, so the key space is too): "cvsjrnl" in ASCII.
const JOURNAL_WRITER_LOCK: i64 = 0x0063_7673_6a72_6e6c;

/// The journal database's schema (`init` applies it there; idempotent).
pub const JOURNAL_SCHEMA: &[(&str, &str)] = &[
    ("journal/001_journal.sql", include_str!("../../sql/journal/001_journal.sql")),
    ("journal/002_push_cursor.sql", include_str!("../../sql/journal/002_push_cursor.sql")),
    ("journal/003_moved_away.sql", include_str!("../../sql/journal/003_moved_away.sql")),
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
        apply_files(self.client, &self.at, SCHEMA).await
    }

    /// Whether `init` created the control tables of the clinic database
    /// that `doctor` checks.
    pub async fn control_tables_present(&self) -> Result<bool> {
        let row = self
            .client
            .query_one("SELECT to_regclass('_sync_metadata') IS NOT NULL AND to_regclass('_sync_log') IS NOT NULL", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}

/// The journal database's tables (`_sync_journal` with its cursor
/// `_sync_push` and the `_sync_pending` view, `_sync_capture`, `_sync_epoch`)
/// as one component sees them. The journal lives in a
/// database of its own beside the clinic's (`[local_postgres]
/// journal_database`, same cluster): logical decoding reads every WAL record
/// but skips another database's at the first check, so capture's own
/// writes (journal rows, positions, the pusher's marks) cost the walsender
/// nothing. The price is that a journal statement can never be composed
/// into a statement on a clinic table: the down path asks the journal first
/// and passes what it learnt as a parameter ([`tombstoned`]).
#[derive(Clone)]
pub struct JournalStore<'c> {
    client: &'c Client,
    at: At,
}

impl<'c> JournalStore<'c> {
    pub fn new(client: &'c Client, at: At) -> Self {
        JournalStore { client, at }
    }

    /// The connection, for the caller's own statements in the same
    /// transaction (BEGIN/COMMIT stay with the caller).
    pub fn client(&self) -> &'c Client {
        self.client
    }

    fn err(&self, e: tokio_postgres::Error) -> SyncError {
        SyncError::from_pg(self.at.clone(), &e)
    }

    /// Applies [`JOURNAL_SCHEMA`], each file in its own transaction.
    pub async fn install_schema(&self) -> Result<()> {
        apply_files(self.client, &self.at, JOURNAL_SCHEMA).await
    }

    /// Serializes the journal's writers (capture, `init` journaling existing
    /// rows, moving an old journal) until the caller's transaction ends, so
    /// journal ids commit in the order they were drawn: the pusher's cursor
    /// (`_sync_push.through_id`) can then never be passed by a row
    /// committing later with a smaller id. Readers and the pusher's marks do
    /// not take it.
    pub async fn lock_for_writing(&self) -> Result<()> {
        self.client.execute("SELECT pg_advisory_xact_lock($1)", &[&JOURNAL_WRITER_LOCK]).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether the journal, its cursor and the capture tables exist (a
    /// journal database of an earlier version has no cursor yet: `init`).
    pub async fn tables_present(&self) -> Result<bool> {
        let row = self
            .client
            .query_one("SELECT to_regclass('_sync_push') IS NOT NULL AND to_regclass('_sync_capture') IS NOT NULL", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Whether the service can start: the journal and capture tables exist
    /// and the slot does (slots are cluster-wide, visible from here).
    pub async fn initialized(&self, slot: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('_sync_push') IS NOT NULL AND to_regclass('_sync_capture') IS NOT NULL
                    AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}

/// Applies numbered schema files, each in its own transaction.
async fn apply_files(client: &Client, at: &At, files: &[(&str, &str)]) -> Result<()> {
    for (name, sql) in files {
        let wrapped = format!("BEGIN;\n{sql}\nCOMMIT;");
        client.batch_execute(&wrapped).await.map_err(|e| SyncError::from_pg(at.doing(format_args!("applying sql/{name}")), &e))?;
    }
    Ok(())
}

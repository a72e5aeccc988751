//! The `_sync_pending` journal: the durable hand-off between WAL capture and
//! the pusher. It lives in the journal database beside the clinic's (see
//! [`JournalStore`]), so capture's own writes are never decoded again.
//!
//! Progress rules (the reason this module exists):
//! - Capture appends a decoded transaction's changes inside one local
//!   transaction and, in that same transaction, records the transaction's
//!   commit LSN in `_sync_capture.journaled_lsn`. Only after that local
//!   COMMIT returns is the slot's flush LSN confirmed. A crash anywhere
//!   before loses nothing (the slot re-sends) and a crash after duplicates
//!   nothing (re-sent transactions at or below `journaled_lsn` are skipped).
//! - Several decoded transactions may share one local transaction (group
//!   commit); one decoded transaction is never split across two, however
//!   large: rows are streamed with COPY in chunks inside the open
//!   transaction, so memory stays bounded.
//! - The pusher reads unsynced, unparked rows in journal order (`id`, which
//!   follows commit order) and marks them synced only after upstream
//!   confirmed them; delivery upstream is therefore at-least-once and the
//!   upstream apply is idempotent.
//!
//! The statements themselves belong to [`crate::store`]; this module is the
//! protocol around them (buffering, transaction boundaries, batch cutting).

use tokio_postgres::Client;

use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;
use crate::store::{JournalRow, JournalStore};

pub use crate::store::{Operation, Queued, Source};

/// Rows buffered in memory before they are streamed into the open local
/// transaction.
const COPY_CHUNK: usize = 2_000;

const JOURNAL: crate::error::At = crate::error::At::local("journal database");
const LOCAL: crate::error::At = crate::error::At::local("local database (capture)");

/// A row image as a JSON object whose values are kept verbatim: merging
/// images (TOAST fill, coalescing) must not round-trip values through
/// `serde_json::Value`, which turns `2.50` into `2.5` and numerics wider
/// than an f64 into approximations. Key order is irrelevant (images become
/// jsonb on both sides).
pub(crate) type RawObject = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;

/// One captured change, ready to be journaled.
#[derive(Debug, Clone)]
pub struct Change {
    pub table: String,
    pub record_id: Option<String>,
    pub op: Operation,
    /// The row image as JSON text (see `sql/001_control_tables.sql`).
    pub data: Option<String>,
    pub commit_lsn: Lsn,
    pub ordinal: i32,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
    pub xid: u32,
    /// TOAST columns whose value the WAL did not carry.
    pub unchanged: Vec<String>,
}

impl Change {
    /// The journal row this change is written as.
    fn row(&self) -> JournalRow<'_> {
        JournalRow {
            table: &self.table,
            record_id: self.record_id.as_deref(),
            op: self.op,
            data: self.data.as_deref(),
            commit_lsn: Some(self.commit_lsn),
            ordinal: Some(self.ordinal),
            xid: Some(self.xid),
            commit_time_micros: self.commit_time_micros,
            unchanged: &self.unchanged,
        }
    }
}

/// Capture's side of the journal: one dedicated connection to the journal
/// database holding at most one open transaction, and one to the clinic's
/// database for reading TOAST values the WAL did not carry.
pub struct Writer {
    client: Client,
    local: Client,
    slot: String,
    in_txn: bool,
    buffered: Vec<Change>,
    rows_in_txn: usize,
}

impl Writer {
    pub fn new(journal: Client, local: Client, slot: &str) -> Self {
        Writer { client: journal, local, slot: slot.to_string(), in_txn: false, buffered: Vec::new(), rows_in_txn: 0 }
    }

    fn store(&self) -> JournalStore<'_> {
        JournalStore::new(&self.client, JOURNAL)
    }

    /// The commit LSN of the last transaction known to be journaled.
    pub async fn journaled_lsn(&self) -> Result<Lsn> {
        self.store().journaled_lsn(&self.slot).await
    }

    /// Rows written (or buffered) since the last commit.
    pub fn rows_in_txn(&self) -> usize {
        self.rows_in_txn + self.buffered.len()
    }

    pub fn has_uncommitted(&self) -> bool {
        self.in_txn || !self.buffered.is_empty()
    }

    /// Queues one change; streams a chunk into the open transaction when the
    /// buffer is full.
    pub async fn append(&mut self, change: Change) -> Result<()> {
        self.buffered.push(change);
        if self.buffered.len() >= COPY_CHUNK {
            self.flush_chunk().await?;
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.client.batch_execute("BEGIN").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
            self.in_txn = true;
            self.store().lock_for_writing().await?;
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<()> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        let written = self.store().journal_batch(self.buffered.iter().map(Change::row)).await?;
        self.buffered.clear();
        self.rows_in_txn += written as usize;
        crate::crash::point("capture.mid_transaction");
        Ok(())
    }

    /// Fills TOAST values the WAL did not carry for `change`: from the local
    /// row first (it also reflects down-path writes, which the journal never
    /// sees), else — the row was deleted since — from the latest journaled
    /// image of the record. The local row is correct unless a later
    /// transaction changed the value, and then that later change is
    /// journaled too, so upstream converges. What cannot be filled stays in
    /// `change.unchanged` (the upstream apply leaves those columns alone).
    pub async fn fill_unchanged(&mut self, change: &mut Change, table: &crate::catalog::Table) -> Result<()> {
        let parse = |s: &str| serde_json::from_str::<RawObject>(s).ok();
        if change.unchanged.is_empty() {
            return Ok(());
        }
        // Earlier rows of this same transaction must be visible to the lookup.
        self.flush_chunk().await?;
        self.begin().await?;
        let Some(id) = change.record_id.clone() else { return Ok(()) };
        let mut filled = RawObject::new();
        if let Some(pk) = table.pk() {
            let sql = format!(
                "SELECT {}::text FROM {} _cvs_r WHERE _cvs_r.{} = $1::text::{}",
                table.image_sql("_cvs_r", Some(&change.unchanged)),
                table.qualified(),
                crate::catalog::quote_ident(&pk.name),
                pk.type_name
            );
            if let Some(r) = self.local.query_opt(&sql, &[&id]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))? {
                let s: String = r.get(0);
                if let Some(m) = parse(&s) {
                    filled.extend(m);
                }
            }
        }
        let missing: Vec<String> = change.unchanged.iter().filter(|c| !filled.contains_key(*c)).cloned().collect();
        if !missing.is_empty()
            && let Some(m) = self.store().latest_journaled_values(&change.table, &id, &missing).await?.and_then(|s| parse(&s))
        {
            filled.extend(m);
        }
        if filled.is_empty() {
            return Ok(());
        }
        let Some(data) = &change.data else { return Ok(()) };
        let mut obj: RawObject =
            serde_json::from_str(data).map_err(|e| SyncError::new(ErrorKind::Decode, format!("journal image is not JSON: {e}")))?;
        obj.extend(filled);
        change.unchanged.retain(|c| !obj.contains_key(c));
        change.data = Some(serde_json::to_string(&obj).map_err(|e| SyncError::new(ErrorKind::Decode, format!("journal image: {e}")))?);
        Ok(())
    }

    /// Commits the open transaction, recording `journaled_lsn` (the last
    /// journaled transaction's commit LSN) and `end_lsn` (what will be
    /// confirmed to the slot) with it.
    pub async fn commit(&mut self, journaled_lsn: Lsn, end_lsn: Lsn) -> Result<()> {
        self.flush_chunk().await?;
        self.begin().await?;
        self.store().record_journaled(&self.slot, journaled_lsn, end_lsn).await?;
        self.client.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
        self.in_txn = false;
        self.rows_in_txn = 0;
        crate::crash::point("capture.after_journal_commit");
        Ok(())
    }

    /// Drops whatever was written since the last commit (an incomplete
    /// decoded transaction at shutdown; the slot will send it again).
    pub async fn abandon(&mut self) -> Result<()> {
        self.buffered.clear();
        self.rows_in_txn = 0;
        if self.in_txn {
            self.in_txn = false;
            self.client.batch_execute("ROLLBACK").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
        }
        Ok(())
    }
}

/// How many times `limit` one transaction may grow a batch before it is
/// split (only a single transaction larger than that is ever split).
pub const MAX_TXN_BATCH_FACTOR: i64 = 20;

/// The next batch of `source` rows after journal id `after_id`, in journal
/// order: about `limit` rows, cut at a transaction boundary.
///
/// A transaction is never split across batches when avoidable: changes of
/// one transaction share `now()`, so an INSERT and a later UPDATE of the same
/// row carry the same `updated_at`, and only coalescing them inside one batch
/// keeps the later image (across batches it would arrive as a tie, which
/// upstream wins). A batch that would end inside a transaction ends before
/// it instead; a batch that is one transaction larger than `limit` takes up
/// to `limit * MAX_TXN_BATCH_FACTOR` rows of it.
pub async fn next_batch(client: &Client, source: &Source, limit: i64, after_id: i64) -> Result<Vec<Queued>> {
    let mut rows = fetch(client, source, limit + 1, after_id, None).await?;
    if rows.len() as i64 <= limit {
        return Ok(rows);
    }
    let next = rows.pop().expect("limit + 1 rows");
    let last_lsn = rows.last().and_then(|r| r.commit_lsn);
    if last_lsn.is_none() || last_lsn != next.commit_lsn {
        return Ok(rows); // the batch ends on a transaction boundary
    }
    let start = rows.iter().position(|r| r.commit_lsn == last_lsn).unwrap_or(0);
    if start > 0 {
        rows.truncate(start);
        return Ok(rows);
    }
    // One transaction larger than `limit`: take more of it.
    let last = rows.last().expect("limit >= 1 rows");
    let (Some(lsn), Some(ordinal)) = (last.commit_lsn, last.ordinal) else { return Ok(rows) };
    let more = fetch(client, source, limit * (MAX_TXN_BATCH_FACTOR - 1), last.id, Some((lsn, ordinal))).await?;
    rows.extend(more);
    Ok(rows)
}

/// The first `limit` queued rows after journal id `after_id` (every row up
/// to it settled), wherever a transaction ends: the pusher's reduced batch
/// ([`crate::push::Sizer`]), always a prefix of the queue.
pub async fn next_prefix(client: &Client, limit: i64, after_id: i64) -> Result<Vec<Queued>> {
    fetch(client, &Source::Queue, limit.max(1), after_id, None).await
}

async fn fetch(client: &Client, source: &Source, limit: i64, after_id: i64, tail: Option<(Lsn, i32)>) -> Result<Vec<Queued>> {
    JournalStore::new(client, JOURNAL).journal_rows(source, limit, after_id, tail).await
}

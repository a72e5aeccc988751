//! The pusher: delivers journaled changes upstream in commit order.
//!
//! Each batch reads up to `batch_size` queued journal rows, coalesces repeated
//! changes to the same row (the last image wins; a TRUNCATE is a barrier),
//! applies them upstream in one atomic call, and only then marks the rows
//! synced. A crash between the upstream commit and the local mark re-sends
//! the batch, which the last-write-wins apply absorbs (same image, tie, kept).
//! A row upstream rejects for a data reason is parked with its error and the
//! rest of the batch still lands; whole-batch failures are retried with
//! exponential backoff and jitter, recording `retry_count` and `error`.
//!
//! A batch upstream cannot take as it is — too large (HTTP 413, a program
//! limit, SQLSTATE 54) or too slow (its `statement_timeout`, 57014) — would
//! fail the same way forever, so it is split instead ([`Sizer`]):
//! - the smaller batch is always a prefix of the queue (journal order), so
//!   the `journal_id` upstream reports back as processed never passes an
//!   unsent change; a reduced batch may cut a transaction, which contract 3
//!   allows (one writer's changes apply in commit-position order);
//! - too large: halve the rows of the batch that failed;
//! - too slow: the failed call ran about as long as the server's timeout
//!   `T`. With the cost of a row known from an earlier call of this process,
//!   the next size is what fills half of `T`; else a probe of 1/16 of the
//!   failed rows is sent, and its time sets the size that fills half of `T`
//!   (never above half the failed batch). A batch
//!   that first times out thus settles on a working size by its third call
//!   (timeout, probe, estimate) unless rows cost 16 times more than assumed
//!   by even the probe, when the probe repeats at 1/16 again;
//! - the size grows back by a quarter after [`GROW_AFTER`] successful calls
//!   in a row, but not past half of `T` at the measured cost of a row, nor to
//!   a size refused as too large; back at `batch_size` it is no longer
//!   reduced. `status` says "batch size reduced to N after …" meanwhile;
//! - a single change that still cannot fit is parked alone with its error
//!   (too large: at once; too slow: after `retry_max_attempts` calls, since a
//!   loaded server may time out once), and the rest moves on.
//!
//! Progress is a cursor, not a mark on every row
//! (`sql/journal/002_push_cursor.sql`):
//!
//! ```text
//!   journal ids:  … settled … │ queue: read in id order, batch by batch ─►
//!                          through_id (_sync_push)
//! ```
//!
//! - A batch is the first rows after `through_id` that are neither
//!   delivered nor parked. Journal writers take one lock while they write
//!   ([`crate::store::JournalStore::lock_for_writing`]), so ids commit in
//!   order and no row can appear behind the cursor.
//! - After upstream confirmed a batch, one journal transaction records its
//!   rejections (parking what will not go) and moves `through_id` to the
//!   batch's last row, or to just before its first row that stays queued (a
//!   transient rejection); a delivered row beyond that is marked on its own
//!   row. A crash before that commit re-sends the batch (the apply is
//!   idempotent); after it, nothing of the batch is read again. The commit
//!   is asynchronous (no WAL flush wait per batch): a crash of the clinic's
//!   server may undo the last marks, and those batches are re-sent and kept
//!   upstream as repeats; the next synchronous commit (capture's) makes
//!   them durable.
//!
//! Read ahead: while a full-size batch is applied upstream, the next one is
//! read from the journal (the rows after the batch's last id) and its
//! request built (epochs, bases, JSON; with a branch scope only read, since
//! the scope checks the rows when they are taken), so neither costs wall
//! time in a drain. It is used only if the batch
//! then settles whole (the cursor reaches its last row, nothing rejected);
//! otherwise, and after any failure, the queue is read again. An empty read
//! ahead is never used: "the queue is empty" must come from a read made
//! after capture's progress was sampled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio_postgres::Client;

use crate::error::{Class, ErrorKind, Result, SyncError, class_of_sqlstate};
use crate::journal::{self, Operation, Queued};
use crate::store::{JournalStore, Store};
use crate::upstream::Upstream;

const LOCAL: crate::error::At = crate::error::At::local("local database (pusher)");
const JOURNAL: crate::error::At = crate::error::At::local("journal database (pusher)");

/// What one batch did.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    /// Journal rows read (0 means the queue was empty).
    pub rows: usize,
    pub applied: usize,
    pub kept: usize,
    pub rejected: usize,
    /// Some rejection was not a data error: back off before the next batch.
    pub should_back_off: bool,
    /// Journal rows delivered, per table.
    pub per_table: Vec<(String, i64)>,
    /// Calls upstream refused as too large or too slow before this batch
    /// went through (or its single change was parked).
    pub split_attempts: usize,
    /// Rows this batch moved to other branches, noted for the down path.
    pub moved_away: u64,
}

/// The `_sync_state` key under which the pusher notes its reduced batch
/// size ([`Sizer::note`]) for `status`.
pub const BATCH_NOTE: &str = "push:batch_size";

/// How many successful calls in a row before a reduced batch size grows.
pub const GROW_AFTER: u32 = 8;
/// A probe after a statement timeout sends this fraction of the rows that
/// timed out.
const PROBE_DIVISOR: usize = 16;

/// The batch size upstream can take, learnt from its refusals (see the
/// module docs for the rule). One per pusher; the process forgets it.
#[derive(Debug, Clone)]
pub struct Sizer {
    configured: usize,
    /// The reduced size in journal rows (None: `batch_size`, whole
    /// transactions).
    limit: Option<usize>,
    /// What reduced it.
    cause: Option<ErrorKind>,
    /// How long the last timed-out call ran: about the server's timeout.
    timeout: Option<Duration>,
    /// The cost of one row in the last successful call.
    per_row: Option<Duration>,
    /// While a probe is out: the size that timed out.
    probing: Option<usize>,
    /// The smallest size refused as too large.
    too_large_at: Option<usize>,
    successes: u32,
    /// The status note changed since [`Sizer::take_note_change`].
    changed: bool,
    /// The next batch, read from the journal while the last one was being
    /// applied upstream (see "Read ahead" in the module docs).
    ahead: Option<Ahead>,
}

impl Sizer {
    pub fn new(batch_size: usize) -> Sizer {
        Sizer {
            configured: batch_size.max(1),
            limit: None,
            cause: None,
            timeout: None,
            per_row: None,
            probing: None,
            too_large_at: None,
            successes: 0,
            changed: false,
            ahead: None,
        }
    }

    /// The reduced size, if reduced.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// What `status` says while the size is reduced.
    pub fn note(&self) -> Option<String> {
        let limit = self.limit?;
        let why = match self.cause {
            Some(ErrorKind::TooSlow) => "statement timeout",
            _ => "upstream refused a request as too large",
        };
        Some(format!("batch size reduced to {limit} after {why} (configured {})", self.configured))
    }

    /// The note, once after each change (None inside: no note any more).
    pub fn take_note_change(&mut self) -> Option<Option<String>> {
        std::mem::take(&mut self.changed).then(|| self.note())
    }

    /// Sets the reduced size. It may exceed `batch_size` when the batch that
    /// failed was one transaction larger than it ([`journal::next_batch`]):
    /// the reduced batch is still read as an exact prefix.
    fn set_limit(&mut self, limit: Option<usize>) {
        if limit.is_none() {
            self.cause = None;
            self.too_large_at = None;
        }
        self.changed |= limit != self.limit;
        self.limit = limit;
        self.successes = 0;
    }

    /// A call of `sent` rows (more than one change) was refused as `kind`
    /// after `elapsed`; returns the next size.
    pub fn failed(&mut self, kind: ErrorKind, sent: usize, elapsed: Duration) -> usize {
        let half = (sent / 2).max(1);
        let next = if kind == ErrorKind::TooSlow {
            self.timeout = Some(elapsed);
            self.probing = None;
            // An estimate is tried once; if it was wrong, probe.
            match self.per_row.take() {
                Some(c) if !c.is_zero() => ((elapsed.as_secs_f64() / 2.0 / c.as_secs_f64()) as usize).clamp(1, half),
                _ => {
                    self.probing = Some(sent);
                    (sent / PROBE_DIVISOR).max(1)
                }
            }
        } else {
            self.too_large_at = Some(self.too_large_at.map_or(sent, |t| t.min(sent)));
            half
        };
        self.cause = Some(kind);
        self.set_limit(Some(next));
        self.changed = true;
        next
    }

    /// A call of `rows` rows went through in `elapsed`.
    pub fn succeeded(&mut self, rows: usize, elapsed: Duration) {
        if rows == 0 {
            return;
        }
        let per_row = elapsed / rows as u32;
        self.per_row = Some(per_row);
        let Some(limit) = self.limit else { return };
        // Half the server's timeout at this cost per row.
        let fits = self.timeout.filter(|_| !per_row.is_zero()).map(|t| (t.as_secs_f64() / 2.0 / per_row.as_secs_f64()) as usize);
        if let Some(failed) = self.probing.take() {
            let next = fits.unwrap_or(rows).clamp(1, (failed / 2).max(1));
            self.set_limit(Some(next));
            return;
        }
        self.successes += 1;
        if self.successes < GROW_AFTER {
            return;
        }
        self.successes = 0;
        let mut next = (limit + limit / 4).max(limit + 1);
        if let Some(t) = self.too_large_at {
            next = next.min(t.saturating_sub(1));
        }
        if let Some(f) = fits {
            next = next.min(f);
        }
        if next >= self.configured {
            self.set_limit(None);
        } else if next > limit {
            self.set_limit(Some(next));
        }
    }
}

/// A batch that failed as a whole, with the journal rows it covered.
#[derive(Debug)]
pub struct BatchFailure {
    pub error: SyncError,
    pub ids: Vec<i64>,
}

/// The upstream request built from a batch, and which journal rows each
/// element stands for.
#[derive(Clone)]
pub(crate) struct Built {
    pub json: String,
    pub covers: Vec<Vec<i64>>,
    pub tables: Vec<String>,
}

/// A batch read ahead, and when no branch scope has to check its rows first,
/// its request built too.
#[derive(Clone)]
struct Ahead {
    rows: Vec<Queued>,
    built: Option<Built>,
}

impl std::fmt::Debug for Ahead {
    // Counts only: the rows and the request carry patient data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead").field("rows", &self.rows.len()).field("built", &self.built.is_some()).finish()
    }
}

/// One change in the contract of `sql/upstream/001_apply.sql` (the short
/// keys are what the SQL function reads).
#[derive(serde::Serialize)]
struct Element<'a> {
    /// The caller's index, echoed in the outcome.
    #[serde(rename = "i")]
    index: usize,
    /// Upstream schema (None: `public`).
    #[serde(rename = "s", skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
    #[serde(rename = "t")]
    table: &'a str,
    /// `upsert`, `delete` or `truncate`.
    op: &'static str,
    /// The key of a deleted row.
    #[serde(rename = "k", skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    /// When a delete or truncate committed locally (timestamptz text).
    #[serde(rename = "ts", skip_serializing_if = "Option::is_none")]
    committed_at: Option<&'a str>,
    /// The row image of an upsert.
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<&'a RawValue>,
    /// The change's position at this clinic (upstream applies one writer's
    /// changes in this order): capture epoch, commit LSN, ordinal.
    #[serde(rename = "e")]
    epoch: i32,
    #[serde(rename = "l")]
    commit_lsn: String,
    #[serde(rename = "n")]
    ordinal: i32,
    /// The last journal row the element covers: upstream reports the
    /// highest it processed back through the change feed.
    #[serde(rename = "j")]
    journal_id: i64,
    /// The upstream version this clinic last downloaded for the row (the
    /// change was made on it): replacing that version is an edit, not a
    /// conflict.
    #[serde(rename = "b", skip_serializing_if = "Option::is_none")]
    base: Option<i64>,
}

/// Base versions by (table, record id) (`_sync_row_base`).
pub(crate) type Bases = HashMap<(String, String), i64>;

/// The capture epochs as (epoch, first journal id), oldest first
/// (`_sync_epoch`); a journal row belongs to the last one starting at or
/// before its id.
pub(crate) fn epoch_of(epochs: &[(i32, i64)], id: i64) -> i32 {
    epochs.iter().rev().find(|(_, first)| *first <= id).map_or(1, |(e, _)| *e)
}

/// Coalesces `rows` into upstream elements (pure; see module docs).
pub(crate) fn build(rows: &[Queued], schema: Option<&str>, epochs: &[(i32, i64)], bases: &Bases) -> Result<Built> {
    struct Slot {
        row: usize,
        merged: Option<Box<RawValue>>,
        ids: Vec<i64>,
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    for (n, q) in rows.iter().enumerate() {
        if q.op == Operation::Truncate {
            by_key.retain(|(t, _), _| *t != q.table.as_str());
            slots.push(Slot { row: n, merged: None, ids: vec![q.id] });
            continue;
        }
        let Some(rid) = q.record_id.as_deref() else {
            return Err(SyncError::new(ErrorKind::Decode, format!("journal row {} has no record_id", q.id)));
        };
        match by_key.get(&(q.table.as_str(), rid)) {
            Some(&s) => {
                let prev = &rows[slots[s].row];
                let merged = merge_partial(prev, slots[s].merged.as_deref(), q)?;
                let slot = &mut slots[s];
                slot.row = n;
                slot.merged = merged;
                slot.ids.push(q.id);
            }
            None => {
                by_key.insert((q.table.as_str(), rid), slots.len());
                slots.push(Slot { row: n, merged: None, ids: vec![q.id] });
            }
        }
    }
    let mut json = String::with_capacity(rows.iter().map(|r| r.data.as_ref().map_or(64, |d| d.len() + 64)).sum());
    json.push('[');
    let mut covers = Vec::with_capacity(slots.len());
    let mut tables = Vec::with_capacity(slots.len());
    let mut parsed: Vec<Box<RawValue>> = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let q = &rows[slot.row];
        let row: Option<&RawValue> = match (&slot.merged, q.op) {
            (Some(m), _) => Some(m),
            (None, Operation::Insert | Operation::Update) => {
                let data =
                    q.data.as_deref().ok_or_else(|| SyncError::new(ErrorKind::Decode, format!("journal row {} has no data", q.id)))?;
                parsed.push(
                    RawValue::from_string(data.to_string())
                        .map_err(|e| SyncError::new(ErrorKind::Decode, format!("journal row {} holds invalid JSON: {e}", q.id)))?,
                );
                parsed.last().map(|b| &**b)
            }
            _ => None,
        };
        let el = Element {
            index: i,
            schema,
            table: &q.table,
            op: match q.op {
                Operation::Insert | Operation::Update => "upsert",
                Operation::Delete => "delete",
                Operation::Truncate => "truncate",
            },
            key: if q.op == Operation::Delete { q.record_id.as_deref() } else { None },
            committed_at: matches!(q.op, Operation::Delete | Operation::Truncate).then_some(q.commit_ts.as_str()),
            row,
            epoch: epoch_of(epochs, q.id),
            // Rows without a commit position (`init --upload-existing`, the
            // trigger era) come before every captured change of their epoch.
            commit_lsn: q.commit_lsn.map_or_else(|| "0/0".to_string(), |l| l.to_string()),
            ordinal: if q.commit_lsn.is_some() { q.ordinal.unwrap_or(0) } else { 0 },
            journal_id: slot.ids.iter().copied().max().unwrap_or(q.id),
            base: q.record_id.as_ref().and_then(|id| bases.get(&(q.table.clone(), id.clone())).copied()),
        };
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(&el).expect("serializable"));
        covers.push(slot.ids.clone());
        tables.push(q.table.clone());
    }
    json.push(']');
    Ok(Built { json, covers, tables })
}

/// When a later image of a row lacks columns (unfilled TOAST values) that an
/// earlier image in the same batch had, carry them over.
fn merge_partial(prev: &Queued, prev_merged: Option<&RawValue>, next: &Queued) -> Result<Option<Box<RawValue>>> {
    if next.op != Operation::Update {
        return Ok(None);
    }
    let prev_text = match (prev_merged, prev.op) {
        (Some(m), _) => m.get(),
        (None, Operation::Insert | Operation::Update) => prev.data.as_deref().unwrap_or("{}"),
        _ => return Ok(None),
    };
    let Some(next_text) = next.data.as_deref() else { return Ok(None) };
    let parse = |s: &str| serde_json::from_str::<journal::RawObject>(s).ok();
    let (Some(p), Some(mut n)) = (parse(prev_text), parse(next_text)) else { return Ok(None) };
    if p.keys().all(|k| n.contains_key(k)) {
        return Ok(None);
    }
    for (k, v) in p {
        n.entry(k).or_insert(v);
    }
    let text = serde_json::to_string(&n).map_err(|e| SyncError::new(ErrorKind::Decode, format!("merging images: {e}")))?;
    Ok(Some(RawValue::from_string(text).map_err(|e| SyncError::new(ErrorKind::Decode, format!("merging images: {e}")))?))
}

/// What the pusher works with, passed to [`push_batch`] as one.
pub struct Pusher<'a, U> {
    /// The clinic's database (row bases, statistics, the branch scope).
    pub local: &'a Client,
    /// The journal database (the queue, its marks).
    pub journal: &'a Client,
    pub upstream: &'a U,
    /// `[supabase] schema` when not public.
    pub schema: Option<&'a str>,
    /// `[sync] retry_max_attempts`.
    pub max_attempts: u32,
    /// The branch scope, when this server has one.
    pub scope: Option<&'a crate::scope::UpFilter>,
}

/// Delivers one batch, split as [`Sizer`] says when upstream cannot take it
/// as it is. `Ok` with `rows == 0` means the queue is empty.
pub async fn push_batch<U: Upstream>(p: &Pusher<'_, U>, sizer: &mut Sizer) -> std::result::Result<BatchReport, BatchFailure> {
    let &Pusher { local, journal, upstream, schema, max_attempts, scope } = p;
    let mut split_attempts = 0;
    let (rows, built, outcome) = loop {
        let (limit, configured) = (sizer.limit(), sizer.configured as i64);
        let ahead = sizer.ahead.take().filter(|_| limit.is_none());
        let (rows, prepared) = match (ahead, limit) {
            (Some(a), _) => (Ok(a.rows), a.built),
            (None, None) => (journal::next_batch(journal, &journal::Source::Queue, configured, 0).await, None),
            (None, Some(limit)) => (journal::next_prefix(journal, limit as i64, 0).await, None),
        };
        let rows = rows.map_err(|error| BatchFailure { error, ids: vec![] })?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let fail = |error| BatchFailure { error, ids: ids.clone() };
        // Branch scope: changes of other branches' rows are parked, not sent; read the batch again without them.
        if let Some(f) = scope
            && f.hold_back(local, journal, &rows).await.map_err(fail)? > 0
        {
            continue;
        }
        let built = match prepared {
            Some(built) => built,
            None => prepare(local, journal, &rows, schema).await.map_err(fail)?,
        };
        let started = Instant::now();
        // Read ahead: the next batch comes from the journal while this one
        // is applied upstream (a full-size batch, first attempt only), and
        // its request is built (unless a branch scope checks it first).
        let last_id = rows.last().map_or(0, |r| r.id);
        let read_ahead = async {
            if limit.is_some() || split_attempts > 0 {
                return None;
            }
            let rows = journal::next_batch(journal, &journal::Source::Queue, configured, last_id).await.ok()?;
            let built = match scope {
                None if !rows.is_empty() => prepare(local, journal, &rows, schema).await.ok(),
                _ => None,
            };
            Some(Ahead { rows, built })
        };
        let (applied, ahead) = tokio::join!(upstream.apply(&built.json), read_ahead);
        match applied {
            Ok(outcome) => {
                sizer.succeeded(rows.len(), started.elapsed());
                sizer.ahead = ahead.filter(|a| !a.rows.is_empty());
                break (rows, built, outcome);
            }
            Err(e) if matches!(e.kind, ErrorKind::TooLarge | ErrorKind::TooSlow) => {
                split_attempts += 1;
                if built.covers.len() > 1 {
                    let next = sizer.failed(e.kind, rows.len(), started.elapsed());
                    tracing::warn!(
                        rows = rows.len(), next_rows = next, elapsed_ms = started.elapsed().as_millis() as u64, error = %e,
                        "upstream cannot take this batch as it is: splitting it"
                    );
                    continue;
                }
                return park_unsplittable(local, journal, &rows, &built, &e, max_attempts, split_attempts).await;
            }
            Err(e) => return Err(fail(e)),
        }
    };
    crate::crash::point("push.after_upstream_apply");

    let mut synced: Vec<i64> = Vec::with_capacity(rows.len());
    let mut per_table: HashMap<&str, i64> = HashMap::new();
    for &i in outcome.applied.iter().chain(outcome.kept.iter()) {
        let Some(c) = built.covers.get(i as usize) else { continue };
        synced.extend_from_slice(c);
        *per_table.entry(built.tables[i as usize].as_str()).or_default() += c.len() as i64;
    }
    let retry_count: HashMap<i64, i32> = rows.iter().map(|r| (r.id, r.retry_count)).collect();
    let mut report = BatchReport {
        rows: rows.len(),
        applied: outcome.applied.len(),
        kept: outcome.kept.len(),
        rejected: outcome.rejected.len(),
        should_back_off: false,
        per_table: per_table.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        split_attempts,
        moved_away: 0,
    };
    // The journal's marks are the durable fact (one transaction in the
    // journal database); the clinic database's statistics follow, best
    // effort and without waiting for their own WAL flush (the next
    // synchronous commit flushes them): a crash loses at most the last
    // batches' counters, never a change.
    let jstore = JournalStore::new(journal, JOURNAL);
    let mut table_errors: Vec<(&str, String)> = Vec::new();
    let last_id = rows.last().map_or(0, |r| r.id);
    let write = async {
        // Asynchronous commit: a crash may lose the last batches' marks, and
        // those batches are sent again, which upstream keeps (same writer,
        // same position). Nothing is lost, and a drain does not wait for a
        // WAL flush per batch (the next synchronous commit flushes them).
        journal.batch_execute("BEGIN; SET LOCAL synchronous_commit = off").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
        for r in &outcome.rejected {
            let Some(c) = built.covers.get(r.index as usize) else { continue };
            let class = r.code.as_deref().map(class_of_sqlstate).unwrap_or(Class::Data);
            let attempts = c.iter().map(|id| retry_count.get(id).copied().unwrap_or(0)).max().unwrap_or(0) + 1;
            let park = class != Class::Transient || attempts as u32 >= max_attempts;
            if !park {
                report.should_back_off = true;
            }
            let text = r.describe();
            // The detail may quote row values (patient data): journal only.
            tracing::warn!(
                table = %built.tables[r.index as usize], rows = c.len(), parked = park,
                code = r.code.as_deref().unwrap_or(""), error = %r.message, "change rejected upstream"
            );
            jstore.record_failure(c, &text, park).await?;
            table_errors.push((built.tables[r.index as usize].as_str(), text));
        }
        // After the rejections: the cursor stops before what stays queued.
        let through = jstore.settle(&synced, last_id).await?;
        // What was read ahead is the next batch only if this one went
        // through whole; else the queue is read again.
        if through != last_id || !outcome.rejected.is_empty() {
            sizer.ahead = None;
        }
        // Moves out of the branch scope, noted with the marks: a restart cannot lose them.
        if let Some(f) = scope {
            report.moved_away = jstore.note_moved_away(&f.take_moved()).await?;
        }
        journal.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
        Ok::<_, SyncError>(())
    };
    if let Err(e) = write.await {
        sizer.ahead = None;
        let _ = journal.batch_execute("ROLLBACK").await;
        return Err(BatchFailure { error: e, ids: vec![] });
    }
    crate::crash::point("push.after_journal_marks");
    let store = Store::new(local, LOCAL);
    let stats = async {
        local.batch_execute("BEGIN; SET LOCAL synchronous_commit = off").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        // Sent together (one connection runs them in this order): one round
        // trip for the lot, not one per table.
        tokio::try_join!(
            futures_util::future::try_join_all(table_errors.iter().map(|(table, text)| store.record_table_error(table, text))),
            futures_util::future::try_join_all(per_table.iter().map(|(table, n)| store.record_synced_up(table, *n))),
            store.record_hourly(crate::store::Direction::Up, per_table.values().sum()),
        )?;
        local.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        Ok::<_, SyncError>(())
    };
    if let Err(e) = stats.await {
        let _ = local.batch_execute("ROLLBACK").await;
        tracing::warn!(error = %e, "batch delivered and marked, but its statistics were not recorded");
    }
    Ok(report)
}

/// The request for `rows`: their capture epochs and the upstream versions
/// this clinic last downloaded of their rows (the bases), then the JSON.
async fn prepare(local: &Client, journal: &Client, rows: &[Queued], schema: Option<&str>) -> Result<Built> {
    let store = Store::new(local, LOCAL);
    let keys: Vec<(&str, &str)> = rows.iter().filter_map(|r| r.record_id.as_deref().map(|id| (r.table.as_str(), id))).collect();
    let jstore = JournalStore::new(journal, JOURNAL);
    let (epochs, bases) = tokio::try_join!(jstore.epochs(), store.bases(&keys))?;
    build(rows, schema, &epochs, &bases)
}

/// One change upstream cannot take even alone: parked with the error (a
/// timeout only after `max_attempts` calls; until then the caller backs
/// off), in one local transaction.
async fn park_unsplittable(
    local: &Client,
    journal: &Client,
    rows: &[Queued],
    built: &Built,
    e: &SyncError,
    max_attempts: u32,
    split_attempts: usize,
) -> std::result::Result<BatchReport, BatchFailure> {
    let ids: Vec<i64> = built.covers.iter().flatten().copied().collect();
    let attempts = rows.iter().map(|r| r.retry_count).max().unwrap_or(0) + 1;
    let park = e.kind == ErrorKind::TooLarge || attempts as u32 >= max_attempts;
    let table = built.tables.first().map_or("", String::as_str);
    let what = if e.kind == ErrorKind::TooSlow { "too slow for upstream even alone" } else { "too large for upstream even alone" };
    let text = format!("{what}: {e}");
    tracing::warn!(table = %table, rows = ids.len(), parked = park, error = %e, "{what}");
    if let Err(err) = JournalStore::new(journal, JOURNAL).record_failure(&ids, &text, park).await {
        return Err(BatchFailure { error: err, ids: vec![] });
    }
    if let Err(err) = Store::new(local, LOCAL).record_table_error(table, &text).await {
        tracing::warn!(error = %err, "change parked, but the table's last error was not recorded");
    }
    Ok(BatchReport { rows: rows.len(), rejected: 1, should_back_off: !park, split_attempts, ..Default::default() })
}

/// Exponential backoff with full jitter: base·2^attempt, capped, times a
/// random factor in [0.5, 1].
pub fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    backoff_after(base, attempt, cap, None)
}

/// [`backoff`], but never shorter than what the server asked for.
pub fn backoff_after(base: Duration, attempt: u32, cap: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let d = exp.min(cap);
    let f: f64 = 0.5 + rand::random::<f64>() * 0.5;
    let d = d.mul_f64(f);
    retry_after.map_or(d, |r| d.max(r.min(Duration::from_secs(600))))
}

/// Totals of a drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainReport {
    pub rows: usize,
    pub applied: usize,
    pub kept: usize,
    pub rejected: usize,
    pub batches: usize,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i64, table: &str, rid: Option<&str>, op: Operation, data: Option<&str>) -> Queued {
        Queued {
            id,
            table: table.into(),
            record_id: rid.map(Into::into),
            op,
            data: data.map(Into::into),
            commit_ts: "2026-01-01 00:00:00+00".into(),
            retry_count: 0,
            commit_lsn: None,
            ordinal: None,
        }
    }

    /// A server that takes a call when its rows cost at most `timeout`:
    /// the calls until one goes through at the size the sizer then keeps,
    /// and that size.
    fn server(sizer: &mut Sizer, batch: usize, per_row: Duration, timeout: Duration) -> (usize, usize) {
        let mut calls = 0;
        let mut size = batch;
        loop {
            calls += 1;
            let took = per_row * size as u32 + Duration::from_millis(5);
            if took <= timeout {
                sizer.succeeded(size, took);
                let next = sizer.limit().unwrap_or(batch);
                if next == size {
                    return (calls, size);
                }
                size = next;
            } else {
                size = sizer.failed(ErrorKind::TooSlow, size, timeout);
            }
        }
    }

    #[test]
    fn a_batch_that_first_times_out_settles_on_a_working_size_within_three_calls() {
        for (batch, per_row_ms, timeout_ms) in [(500, 10, 500), (1000, 40, 8000), (200, 20, 1000), (20_000, 3, 8000), (100, 1, 60)] {
            let mut sizer = Sizer::new(batch);
            let (calls, settled) = server(&mut sizer, batch, Duration::from_millis(per_row_ms), Duration::from_millis(timeout_ms));
            assert!(calls <= 3, "{batch} rows at {per_row_ms} ms/row under {timeout_ms} ms: {calls} calls");
            // The settled size fits, with room: at most half the timeout.
            assert!(settled as u64 * per_row_ms <= timeout_ms / 2 + 5, "settled {settled}");
            assert!(settled >= 1 && settled < batch);
            assert_eq!(sizer.note(), Some(format!("batch size reduced to {settled} after statement timeout (configured {batch})")));
        }
    }

    #[test]
    fn with_the_cost_of_a_row_known_a_timeout_goes_straight_to_a_size_that_fits() {
        let mut sizer = Sizer::new(500);
        sizer.succeeded(100, Duration::from_millis(1000));
        let next = sizer.failed(ErrorKind::TooSlow, 500, Duration::from_millis(2000));
        assert_eq!(next, 100, "half of the 2 s timeout at 10 ms a row");
    }

    #[test]
    fn too_large_halves_and_growth_stays_below_the_size_refused() {
        let mut sizer = Sizer::new(1000);
        assert_eq!(sizer.failed(ErrorKind::TooLarge, 1000, Duration::ZERO), 500);
        assert_eq!(sizer.failed(ErrorKind::TooLarge, 500, Duration::ZERO), 250);
        assert_eq!(
            sizer.take_note_change(),
            Some(Some("batch size reduced to 250 after upstream refused a request as too large (configured 1000)".into()))
        );
        assert_eq!(sizer.take_note_change(), None, "reported once");
        for _ in 0..GROW_AFTER - 1 {
            sizer.succeeded(250, Duration::from_millis(10));
        }
        assert_eq!(sizer.limit(), Some(250), "not before {GROW_AFTER} successes");
        sizer.succeeded(250, Duration::from_millis(10));
        assert_eq!(sizer.limit(), Some(312), "a quarter more");
        for _ in 0..10 * GROW_AFTER {
            sizer.succeeded(312, Duration::from_millis(10));
        }
        assert_eq!(sizer.limit(), Some(499), "never to the size refused");
    }

    #[test]
    fn a_transaction_larger_than_the_batch_size_is_split_below_its_own_size() {
        let mut sizer = Sizer::new(500);
        // next_batch took 8,000 rows of one transaction; they were too large.
        assert_eq!(sizer.failed(ErrorKind::TooLarge, 8000, Duration::ZERO), 4000);
        assert_eq!(sizer.limit(), Some(4000), "read as an exact prefix, not as whole transactions again");
    }

    #[test]
    fn a_reduced_size_grows_back_to_the_configured_one_when_there_is_room() {
        let mut sizer = Sizer::new(100);
        sizer.failed(ErrorKind::TooSlow, 100, Duration::from_millis(1000));
        sizer.succeeded(6, Duration::from_millis(6));
        for _ in 0..20 * GROW_AFTER {
            sizer.succeeded(sizer.limit().unwrap_or(100), Duration::from_millis(10));
        }
        assert_eq!(sizer.limit(), None);
        assert_eq!(sizer.note(), None);
    }

    #[test]
    fn repeated_changes_to_a_row_coalesce_to_the_last_image() {
        let rows = vec![
            q(1, "a", Some("1"), Operation::Insert, Some(r#"{"id":"1","v":"x"}"#)),
            q(2, "a", Some("2"), Operation::Insert, Some(r#"{"id":"2"}"#)),
            q(3, "a", Some("1"), Operation::Update, Some(r#"{"id":"1","v":"y"}"#)),
        ];
        let b = build(&rows, None, &[], &Bases::new()).unwrap();
        assert_eq!(b.covers, vec![vec![1, 3], vec![2]]);
        assert!(b.json.contains(r#""v":"y""#) && !b.json.contains(r#""v":"x""#), "{}", b.json);
    }

    #[test]
    fn merging_partial_images_keeps_every_value_verbatim() {
        let rows = vec![
            q(
                1,
                "a",
                Some("1"),
                Operation::Insert,
                Some(r#"{"id":"1","big":"B","m":{"l":[1,2.50,"x"]},"n":123456789012345678901234567890.10}"#),
            ),
            q(2, "a", Some("1"), Operation::Update, Some(r#"{"id":"1","p":0.10,"v":"y"}"#)),
        ];
        let b = build(&rows, None, &[], &Bases::new()).unwrap();
        for kept in [r#"[1,2.50,"x"]"#, "123456789012345678901234567890.10", r#""p":0.10"#, r#""big":"B""#] {
            assert!(b.json.contains(kept), "{kept} not verbatim in {}", b.json);
        }
    }

    #[test]
    fn truncate_is_a_barrier_for_coalescing() {
        let rows = vec![
            q(1, "a", Some("1"), Operation::Insert, Some(r#"{"id":"1"}"#)),
            q(2, "a", None, Operation::Truncate, None),
            q(3, "a", Some("1"), Operation::Insert, Some(r#"{"id":"1"}"#)),
        ];
        let b = build(&rows, None, &[], &Bases::new()).unwrap();
        assert_eq!(b.covers, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn a_partial_image_keeps_columns_from_the_earlier_image_in_the_batch() {
        let rows = vec![
            q(1, "a", Some("1"), Operation::Insert, Some(r#"{"id":"1","big":"B","v":"x"}"#)),
            q(2, "a", Some("1"), Operation::Update, Some(r#"{"id":"1","v":"y"}"#)),
        ];
        let b = build(&rows, None, &[], &Bases::new()).unwrap();
        assert!(b.json.contains(r#""big":"B""#) && b.json.contains(r#""v":"y""#), "{}", b.json);
    }

    #[test]
    fn elements_keep_the_short_keys_the_upstream_apply_reads() {
        let rows = vec![
            q(1, "a", Some("1"), Operation::Insert, Some(r#"{"id":"1"}"#)),
            q(2, "a", Some("2"), Operation::Delete, None),
            q(3, "b", None, Operation::Truncate, None),
        ];
        let b = build(&rows, Some("clinic"), &[], &Bases::new()).unwrap();
        assert_eq!(
            b.json,
            concat!(
                r#"[{"i":0,"s":"clinic","t":"a","op":"upsert","row":{"id":"1"},"e":1,"l":"0/0","n":0,"j":1},"#,
                r#"{"i":1,"s":"clinic","t":"a","op":"delete","k":"2","ts":"2026-01-01 00:00:00+00","e":1,"l":"0/0","n":0,"j":2},"#,
                r#"{"i":2,"s":"clinic","t":"b","op":"truncate","ts":"2026-01-01 00:00:00+00","e":1,"l":"0/0","n":0,"j":3}]"#
            )
        );
        let b = build(&rows[..1], None, &[], &Bases::new()).unwrap();
        assert_eq!(b.json, r#"[{"i":0,"t":"a","op":"upsert","row":{"id":"1"},"e":1,"l":"0/0","n":0,"j":1}]"#);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        assert!(backoff(base, 0, Duration::from_secs(60)) <= Duration::from_secs(1));
        assert!(backoff(base, 3, Duration::from_secs(60)) >= Duration::from_secs(4));
        assert!(backoff(base, 30, Duration::from_secs(60)) <= Duration::from_secs(60));
    }
}

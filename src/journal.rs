//! The `_sync_pending` journal: the durable hand-off between WAL capture and
//! the pusher.
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

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;

/// Rows buffered in memory before they are streamed into the open local
/// transaction.
const COPY_CHUNK: usize = 2_000;

const LOCAL: crate::error::At = crate::error::At::local("local database (journal)");

/// The kind of a captured change, as stored in `_sync_pending.operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "INSERT" => Operation::Insert,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "TRUNCATE" => Operation::Truncate,
            _ => return None,
        })
    }
}

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

/// JSON text handed to PostgreSQL as `jsonb` without re-parsing it here.
struct JsonText<'a>(&'a str);

impl std::fmt::Debug for JsonText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl ToSql for JsonText<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
    to_sql_checked!();
}

/// A timestamptz given as microseconds since 2000-01-01 UTC (PostgreSQL's
/// own binary representation).
#[derive(Debug)]
struct PgMicros(i64);

impl ToSql for PgMicros {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

/// Capture's side of the journal: one dedicated local connection holding at
/// most one open transaction.
pub struct Writer {
    client: Client,
    slot: String,
    in_txn: bool,
    buffered: Vec<Change>,
    rows_in_txn: usize,
}

impl Writer {
    pub fn new(client: Client, slot: &str) -> Self {
        Writer { client, slot: slot.to_string(), in_txn: false, buffered: Vec::new(), rows_in_txn: 0 }
    }

    /// The commit LSN of the last transaction known to be journaled.
    pub async fn journaled_lsn(&self) -> Result<Lsn> {
        let row = self
            .client
            .query_opt("SELECT journaled_lsn FROM _sync_capture WHERE slot_name = $1", &[&self.slot])
            .await
            .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        Ok(row.map(|r| Lsn::from(r.get::<_, postgres_types::PgLsn>(0))).unwrap_or(Lsn::ZERO))
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
            self.client.batch_execute("BEGIN").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<()> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        let sink = self
            .client
            .copy_in(
                "COPY _sync_pending (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts, xid, unchanged_columns) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        let types = [
            Type::VARCHAR,
            Type::TEXT,
            Type::VARCHAR,
            Type::JSONB,
            Type::PG_LSN,
            Type::INT4,
            Type::TIMESTAMPTZ,
            Type::INT8,
            Type::TEXT_ARRAY,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(writer);
        for c in self.buffered.drain(..) {
            let data = c.data.as_deref().map(JsonText);
            let unchanged: Option<&Vec<String>> = (!c.unchanged.is_empty()).then_some(&c.unchanged);
            let lsn = postgres_types::PgLsn::from(c.commit_lsn);
            let ts = PgMicros(c.commit_time_micros);
            let xid = i64::from(c.xid);
            writer
                .as_mut()
                .write(&[&c.table, &c.record_id, &c.op.as_str(), &data, &lsn, &c.ordinal, &ts, &xid, &unchanged])
                .await
                .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            self.rows_in_txn += 1;
        }
        writer.finish().await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
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
        if change.unchanged.is_empty() {
            return Ok(());
        }
        // Earlier rows of this same transaction must be visible to the lookup.
        self.flush_chunk().await?;
        self.begin().await?;
        let Some(id) = change.record_id.clone() else { return Ok(()) };
        let mut filled: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
        if let Some(pk) = table.pk() {
            let cols: Vec<String> = change
                .unchanged
                .iter()
                .map(|c| format!("{}, to_jsonb(t.{})", crate::catalog::quote_literal(c), crate::catalog::quote_ident(c)))
                .collect();
            let sql = format!(
                "SELECT jsonb_build_object({})::text FROM {} t WHERE t.{} = $1::text::{}",
                cols.join(", "),
                table.qualified(),
                crate::catalog::quote_ident(&pk.name),
                pk.type_name
            );
            if let Some(r) = self.client.query_opt(&sql, &[&id]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))? {
                let s: String = r.get(0);
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&s) {
                    filled.extend(m);
                }
            }
        }
        let missing: Vec<String> = change.unchanged.iter().filter(|c| !filled.contains_key(*c)).cloned().collect();
        if !missing.is_empty() {
            let row = self
                .client
                .query_opt(
                    "SELECT jsonb_object_agg(k, v)::text FROM (
                       SELECT DISTINCT ON (k) k, p.data -> k AS v
                       FROM unnest($3::text[]) k
                       JOIN _sync_pending p ON p.table_name = $1 AND p.record_id = $2 AND p.data ? k
                       ORDER BY k, p.id DESC) s",
                    &[&change.table, &id, &missing],
                )
                .await
                .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            if let Some(m) = row
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|s| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).ok())
            {
                filled.extend(m);
            }
        }
        if filled.is_empty() {
            return Ok(());
        }
        let Some(data) = &change.data else { return Ok(()) };
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(data).map_err(|e| SyncError::new(ErrorKind::Decode, format!("journal image is not JSON: {e}")))?;
        for (k, v) in filled {
            obj.insert(k, v);
        }
        change.unchanged.retain(|c| !obj.contains_key(c));
        change.data = Some(serde_json::Value::Object(obj).to_string());
        Ok(())
    }

    /// Commits the open transaction, recording `journaled_lsn` (the last
    /// journaled transaction's commit LSN) and `end_lsn` (what will be
    /// confirmed to the slot) with it.
    pub async fn commit(&mut self, journaled_lsn: Lsn, end_lsn: Lsn) -> Result<()> {
        self.flush_chunk().await?;
        self.begin().await?;
        let j = postgres_types::PgLsn::from(journaled_lsn);
        let e = postgres_types::PgLsn::from(end_lsn);
        self.client
            .execute(
                "INSERT INTO _sync_capture (slot_name, journaled_lsn, confirmed_end_lsn, updated_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (slot_name) DO UPDATE
                 SET journaled_lsn = GREATEST(_sync_capture.journaled_lsn, EXCLUDED.journaled_lsn),
                     confirmed_end_lsn = GREATEST(_sync_capture.confirmed_end_lsn, EXCLUDED.confirmed_end_lsn),
                     updated_at = now()",
                &[&self.slot, &j, &e],
            )
            .await
            .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        self.client.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
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
            self.client.batch_execute("ROLLBACK").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        }
        Ok(())
    }
}

/// One unsynced journal row as the pusher sees it.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub table: String,
    pub record_id: Option<String>,
    pub op: Operation,
    pub data: Option<String>,
    /// Commit time as timestamptz text (UTC).
    pub commit_ts: String,
    pub retry_count: i32,
    /// The transaction's commit LSN (None for rows from the trigger era).
    pub commit_lsn: Option<Lsn>,
}

/// How many times `limit` one transaction may grow a batch before it is
/// split (only a single transaction larger than that is ever split).
pub const MAX_TXN_BATCH_FACTOR: i64 = 20;

/// Which journal rows a batch reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// Unsynced, unparked rows: the pusher's queue.
    Queue,
    /// Every row with a commit LSN in `[from, to]` (optionally some tables),
    /// synced or not: `replay`.
    Range { from: Lsn, to: Option<Lsn>, tables: Vec<String> },
}

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
    let after = rows.last().map_or(after_id, |r| r.id);
    let more = fetch(client, source, limit * (MAX_TXN_BATCH_FACTOR - 1), after, last_lsn).await?;
    rows.extend(more);
    Ok(rows)
}

async fn fetch(client: &Client, source: &Source, limit: i64, after_id: i64, only_lsn: Option<Lsn>) -> Result<Vec<Queued>> {
    const COLUMNS: &str = "SELECT id, table_name, record_id, operation, data::text,
                    coalesce(commit_ts, created_at)::text, retry_count, commit_lsn FROM _sync_pending";
    let only = only_lsn.map(postgres_types::PgLsn::from);
    let rows = match source {
        // Separate statement text so the partial queue index serves it.
        Source::Queue => {
            client
                .query(
                    &format!(
                        "{COLUMNS} WHERE synced = FALSE AND parked_at IS NULL AND id > $2
                           AND ($3::pg_lsn IS NULL OR commit_lsn = $3) ORDER BY id LIMIT $1"
                    ),
                    &[&limit, &after_id, &only],
                )
                .await
        }
        Source::Range { from, to, tables } => {
            let (from, to) = (postgres_types::PgLsn::from(*from), to.map(postgres_types::PgLsn::from));
            client
                .query(
                    &format!(
                        "{COLUMNS} WHERE id > $2 AND ($3::pg_lsn IS NULL OR commit_lsn = $3)
                           AND commit_lsn >= $4 AND ($5::pg_lsn IS NULL OR commit_lsn <= $5)
                           AND (cardinality($6::text[]) = 0 OR table_name = ANY($6))
                         ORDER BY id LIMIT $1"
                    ),
                    &[&limit, &after_id, &only, &from, &to, tables],
                )
                .await
        }
    }
    .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    rows.into_iter()
        .map(|r| {
            let op: String = r.get(3);
            Ok(Queued {
                id: r.get(0),
                table: r.get(1),
                record_id: r.get(2),
                op: Operation::parse(&op)
                    .ok_or_else(|| SyncError::new(ErrorKind::Decode, format!("journal row {} has unknown operation {op:?}", r.get::<_, i64>(0))))?,
                data: r.get(4),
                commit_ts: r.get(5),
                retry_count: r.get::<_, Option<i32>>(6).unwrap_or(0),
                commit_lsn: r.get::<_, Option<postgres_types::PgLsn>>(7).map(Lsn::from),
            })
        })
        .collect()
}

/// Marks rows delivered (applied upstream, or superseded by a newer upstream
/// row).
pub async fn mark_synced(client: &Client, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE _sync_pending SET synced = TRUE, synced_at = now(), error = NULL WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    Ok(())
}

/// Records a failed attempt for rows; `park` takes them out of the queue
/// until an operator retries them.
pub async fn record_failure(client: &Client, ids: &[i64], error: &str, park: bool) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE _sync_pending SET retry_count = coalesce(retry_count, 0) + 1, error = $2,
                    parked_at = CASE WHEN $3 THEN now() ELSE parked_at END
             WHERE id = ANY($1)",
            &[&ids, &error, &park],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    Ok(())
}

/// Unsynced rows that are still queued (not parked).
pub async fn backlog(client: &Client) -> Result<i64> {
    let r = client
        .query_one("SELECT count(*) FROM _sync_pending WHERE synced = FALSE AND parked_at IS NULL", &[])
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    Ok(r.get(0))
}

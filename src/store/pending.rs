//! The journal (`_sync_journal`, its cursor `_sync_push`; `_sync_pending`
//! is their view for people): its row types and every statement on it
//! (see the invariants in [`crate::store`]; the capture and push protocols
//! built on it are in [`crate::journal`] and [`crate::push`]).

use bytes::{BufMut, BytesMut};
use postgres_types::{FromSql, IsNull, PgLsn, ToSql, Type, to_sql_checked};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use super::JournalStore;
use crate::error::{Result, SyncError};
use crate::lsn::Lsn;

/// The kind of a journaled change, as stored in `_sync_pending.operation`.
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

/// One journal row as [`JournalStore::journal_batch`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct JournalRow<'a> {
    pub table: &'a str,
    pub record_id: Option<&'a str>,
    pub op: Operation,
    /// The row image as JSON text (see `sql/001_control_tables.sql`).
    pub data: Option<&'a str>,
    /// Commit LSN, ordinal in the transaction and xid of a captured change;
    /// rows `init` journals from a table's existing rows carry a settled
    /// position ([`Store::settled_position`]) and ordinals, and no xid.
    pub commit_lsn: Option<Lsn>,
    pub ordinal: Option<i32>,
    pub xid: Option<u32>,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
    /// TOAST columns whose value the WAL did not carry.
    pub unchanged: &'a [String],
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

/// A timestamptz as microseconds since 2000-01-01 UTC (PostgreSQL's own
/// binary representation).
#[derive(Debug, Clone, Copy)]
pub struct PgMicros(pub i64);

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

impl<'a> FromSql<'a> for PgMicros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let b: [u8; 8] = raw.try_into()?;
        Ok(PgMicros(i64::from_be_bytes(b)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
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
    /// The transaction's commit LSN (None for rows from the trigger era or
    /// `init --upload-existing`).
    pub commit_lsn: Option<Lsn>,
    /// The change's place inside its transaction.
    pub ordinal: Option<i32>,
}

/// Which journal rows a batch reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// Unsynced, unparked rows: the pusher's queue.
    Queue,
    /// Every row with a commit LSN in `[from, to]` (optionally some tables),
    /// synced or not: `replay`.
    Range { from: Lsn, to: Option<Lsn>, tables: Vec<String> },
}

/// Totals over the unsynced journal, for `status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalSummary {
    /// Unsynced rows still queued.
    pub backlog: i64,
    /// Unsynced rows parked with an error.
    pub parked: i64,
    /// Age of the oldest queued row.
    pub oldest_pending_seconds: Option<f64>,
}

/// Journal rows per table and operation in an LSN range, for `replay`.
#[derive(Debug, Clone)]
pub struct ReplayStat {
    pub table: String,
    pub operation: String,
    pub rows: i64,
    pub min_lsn: Option<String>,
    pub max_lsn: Option<String>,
}

/// SQL condition, for composing into a statement on a user table: the
/// record has a tombstone — a journaled local `DELETE` that committed at or
/// after `ts`. `tombstones` is a bind parameter holding what
/// [`JournalStore::tombstones`] returned for the statement's records (a
/// JSON object, record id → latest delete's commit time); `record_id` and
/// `ts` are SQL expressions (the record id as text). The journal lives in
/// another database, so the statement cannot read it itself.
pub fn tombstoned(tombstones: &str, record_id: &str, ts: &str) -> String {
    format!("coalesce(({tombstones}::text::jsonb ->> ({record_id}))::timestamptz >= {ts}, false)")
}

/// Queued and parked journal rows per table, and the whole journal's
/// summary, from one reading of the unsynced rows (for `status`).
#[derive(Debug, Clone, Default)]
pub struct QueueCounts {
    /// Table → (queued, parked).
    pub per_table: std::collections::HashMap<String, (i64, i64)>,
    pub summary: JournalSummary,
}

/// The one definition of a tombstone match on journal rows aliased `p`.
fn tombstone_predicate(table: &str, record_id: &str, ts: &str) -> String {
    format!("p.table_name = {table} AND p.record_id = {record_id} AND p.operation = 'DELETE' AND p.commit_ts >= {ts}")
}

impl JournalStore<'_> {
    /// Writes `rows` to the journal with binary COPY, in the caller's open
    /// transaction (see the module invariants). Returns the rows written.
    pub async fn journal_batch<'r>(&self, rows: impl IntoIterator<Item = JournalRow<'r>>) -> Result<u64> {
        let sink = self
            .client
            .copy_in(
                "COPY _sync_journal (table_name, record_id, operation, data, commit_lsn, ordinal, commit_ts, xid, unchanged_columns) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(|e| self.err(e))?;
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
        let mut n = 0;
        for r in rows {
            let data = r.data.map(JsonText);
            let unchanged: Option<&[String]> = (!r.unchanged.is_empty()).then_some(r.unchanged);
            let lsn = r.commit_lsn.map(PgLsn::from);
            let ts = PgMicros(r.commit_time_micros);
            let xid = r.xid.map(i64::from);
            writer
                .as_mut()
                .write(&[&r.table, &r.record_id, &r.op.as_str(), &data, &lsn, &r.ordinal, &ts, &xid, &unchanged])
                .await
                .map_err(|e| self.err(e))?;
            n += 1;
        }
        writer.finish().await.map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// The latest journaled value of each of `columns` for a record, as a
    /// JSON object text (columns no image carries are absent).
    pub async fn latest_journaled_values(&self, table: &str, record_id: &str, columns: &[String]) -> Result<Option<String>> {
        let row = self
            .client
            .query_opt(
                "SELECT jsonb_object_agg(k, v)::text FROM (
                   SELECT DISTINCT ON (k) k, p.data -> k AS v
                   FROM unnest($3::text[]) k
                   JOIN _sync_journal p ON p.table_name = $1 AND p.record_id = $2 AND p.data ? k
                   ORDER BY k, p.id DESC) s",
                &[&table, &record_id, &columns],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Up to `limit` `source` rows after journal id `after_id`, in journal
    /// order; with `tail = (lsn, ordinal)`, only the rest of that transaction:
    /// its rows after `ordinal`.
    ///
    /// The tail is read through the `(commit_lsn, ordinal)` index, never as a
    /// filter on an `id` range scan: such a scan stops only at `limit`
    /// matches, so when fewer remain (the usual case) it walked every later
    /// journal row — 120 ms per read on a 200,000-row backlog of 10,000-row
    /// transactions. A transaction's rows have increasing ids in ordinal
    /// order (one capture writer journals it in one COPY stream).
    pub async fn journal_rows(&self, source: &Source, limit: i64, after_id: i64, tail: Option<(Lsn, i32)>) -> Result<Vec<Queued>> {
        const COLUMNS: &str = "SELECT id, table_name, record_id, operation, data::text,
                    coalesce(commit_ts, created_at)::text, retry_count, commit_lsn, ordinal FROM _sync_journal";
        // Neither delivered nor parked, written so the planner cannot
        // estimate it: on a journal that grew since its last ANALYZE, the
        // default selectivity of `parked_at IS NULL` (0.5%) made a sequential
        // scan and sort look cheaper than walking the primary key from the
        // cursor (90 ms instead of 2 ms per read on 200,000 rows).
        const QUEUED: &str = "coalesce(NOT synced AND parked_at IS NULL, false)";
        let rows = match (source, tail) {
            // The queue: a primary-key range after the pusher's cursor, less
            // the rows already delivered or parked out of order.
            (Source::Queue, None) => {
                self.client
                    .query(
                        &format!(
                            "{COLUMNS} WHERE id > (SELECT through_id FROM _sync_push) AND id > $2
                           AND {QUEUED} ORDER BY id LIMIT $1"
                        ),
                        &[&limit, &after_id],
                    )
                    .await
            }
            (Source::Queue, Some((lsn, ordinal))) => {
                self.client
                    .query(
                        &format!(
                            "{COLUMNS} WHERE commit_lsn = $3 AND ordinal > $4
                           AND id > (SELECT through_id FROM _sync_push) AND id > $2
                           AND {QUEUED} ORDER BY commit_lsn, ordinal LIMIT $1"
                        ),
                        &[&limit, &after_id, &PgLsn::from(lsn), &ordinal],
                    )
                    .await
            }
            (Source::Range { from, to, tables }, None) => {
                let (from, to) = (PgLsn::from(*from), to.map(PgLsn::from));
                self.client
                    .query(
                        &format!(
                            "{COLUMNS} WHERE id > $2
                           AND commit_lsn >= $3 AND ($4::pg_lsn IS NULL OR commit_lsn <= $4)
                           AND (cardinality($5::text[]) = 0 OR table_name = ANY($5))
                         ORDER BY id LIMIT $1"
                        ),
                        &[&limit, &after_id, &from, &to, tables],
                    )
                    .await
            }
            (Source::Range { tables, .. }, Some((lsn, ordinal))) => {
                self.client
                    .query(
                        &format!(
                            "{COLUMNS} WHERE commit_lsn = $3 AND ordinal > $4 AND id > $2
                           AND (cardinality($5::text[]) = 0 OR table_name = ANY($5))
                         ORDER BY commit_lsn, ordinal LIMIT $1"
                        ),
                        &[&limit, &after_id, &PgLsn::from(lsn), &ordinal, tables],
                    )
                    .await
            }
        }
        .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|r| {
                let op: String = r.get(3);
                Ok(Queued {
                    id: r.get(0),
                    table: r.get(1),
                    record_id: r.get(2),
                    op: Operation::parse(&op).ok_or_else(|| {
                        SyncError::new(
                            crate::error::ErrorKind::Decode,
                            format!("journal row {} has unknown operation {op:?}", r.get::<_, i64>(0)),
                        )
                    })?,
                    data: r.get(4),
                    commit_ts: r.get(5),
                    retry_count: r.get::<_, Option<i32>>(6).unwrap_or(0),
                    commit_lsn: r.get::<_, Option<PgLsn>>(7).map(Lsn::from),
                    ordinal: r.get(8),
                })
            })
            .collect()
    }

    /// Settles a batch whose rows up to `last_id` were all read: `delivered`
    /// (applied upstream, or superseded by a newer upstream row) are done,
    /// and rows parked or failed by [`JournalStore::record_failure`] earlier
    /// in the same transaction are already marked. The cursor
    /// (`_sync_push.through_id`) moves to just before the first row up to
    /// `last_id` that still waits, or to `last_id`; a delivered row beyond
    /// it (an earlier one waits to be retried) is marked on its own row, the
    /// exception. Returns the cursor.
    pub async fn settle(&self, delivered: &[i64], last_id: i64) -> Result<i64> {
        let row = self
            .client
            .query_one(
                "WITH p AS (SELECT through_id FROM _sync_push FOR UPDATE),
                 n AS (SELECT coalesce((SELECT min(j.id) - 1 FROM _sync_journal j
                                        WHERE j.id > p.through_id AND j.id <= $2 AND j.synced = FALSE
                                          AND j.parked_at IS NULL AND j.id <> ALL($1)), $2) AS through
                       FROM p),
                 moved AS (UPDATE _sync_push SET through_id = n.through, updated_at = now()
                           FROM n WHERE n.through > _sync_push.through_id RETURNING n.through),
                 logged AS (INSERT INTO _sync_push_log (through_id) SELECT through FROM moved ON CONFLICT DO NOTHING),
                 marked AS (UPDATE _sync_journal j
                            SET synced = j.synced OR j.id > n.through,
                                synced_at = CASE WHEN j.id > n.through THEN now() ELSE j.synced_at END,
                                error = NULL
                            FROM n WHERE j.id = ANY($1) AND (j.id > n.through OR j.error IS NOT NULL))
                 SELECT greatest(n.through, p.through_id) FROM n, p",
                &[&delivered, &last_id],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Records a failed attempt for rows; `park` takes them out of the queue
    /// until an operator retries them.
    pub async fn record_failure(&self, ids: &[i64], error: &str, park: bool) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .execute(
                "UPDATE _sync_journal SET retry_count = coalesce(retry_count, 0) + 1, error = $2,
                    parked_at = CASE WHEN $3 THEN now() ELSE parked_at END
             WHERE id = ANY($1)",
                &[&ids, &error, &park],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Unsynced rows that are still queued (not parked).
    pub async fn backlog(&self) -> Result<i64> {
        let r = self
            .client
            .query_one(
                "SELECT count(*) FROM _sync_journal
                 WHERE id > (SELECT through_id FROM _sync_push) AND synced = FALSE AND parked_at IS NULL",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.get(0))
    }

    /// Unsynced rows parked with an error.
    pub async fn parked(&self) -> Result<i64> {
        let r = self
            .client
            .query_one("SELECT count(*) FROM _sync_journal WHERE parked_at IS NOT NULL AND synced = FALSE", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.get(0))
    }

    /// The commit time (timestamptz text) of the latest tombstone of a
    /// record — a journaled local DELETE — at or after `not_before`
    /// (timestamptz text; None: any).
    pub async fn latest_tombstone(&self, table: &str, record_id: &str, not_before: Option<&str>) -> Result<Option<String>> {
        let sql = format!(
            "SELECT max(p.commit_ts)::text FROM _sync_journal p WHERE {}",
            tombstone_predicate("$1", "$2", "coalesce($3::text::timestamptz, '-infinity')")
        );
        let row = self.client.query_opt(&sql, &[&table, &record_id, &not_before]).await.map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// The tombstones of `record_ids` of `table`: a JSON object from each
    /// record with a journaled local `DELETE` to the latest such delete's
    /// commit time, for [`tombstoned`]. Served by the record index.
    pub async fn tombstones(&self, table: &str, record_ids: &[&str]) -> Result<String> {
        if record_ids.is_empty() {
            return Ok("{}".into());
        }
        let row = self
            .client
            .query_one(
                "SELECT coalesce(jsonb_object_agg(record_id, ts), '{}')::text FROM (
                    SELECT p.record_id, max(p.commit_ts) AS ts FROM _sync_journal p
                    WHERE p.table_name = $1 AND p.record_id = ANY($2) AND p.operation = 'DELETE'
                    GROUP BY p.record_id) t",
                &[&table, &record_ids],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Queued and parked rows per table and in all (see [`QueueCounts`]):
    /// the queue (a key range after the cursor) and the parked rows (their
    /// partial index), never the delivered rows the journal keeps.
    pub async fn queue_counts(&self) -> Result<QueueCounts> {
        let rows = self
            .client
            .query(
                "SELECT table_name::text, count(*) FILTER (WHERE parked_at IS NULL)::int8,
                        count(*) FILTER (WHERE parked_at IS NOT NULL)::int8,
                        extract(epoch FROM now() - min(coalesce(commit_ts, created_at)) FILTER (WHERE parked_at IS NULL))::float8
                 FROM (SELECT table_name, parked_at, commit_ts, created_at FROM _sync_journal
                       WHERE id > (SELECT through_id FROM _sync_push) AND synced = FALSE AND parked_at IS NULL
                       UNION ALL
                       SELECT table_name, parked_at, commit_ts, created_at FROM _sync_journal
                       WHERE synced = FALSE AND parked_at IS NOT NULL) q
                 GROUP BY table_name",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut out = QueueCounts::default();
        for r in &rows {
            let (queued, parked): (i64, i64) = (r.get(1), r.get(2));
            out.per_table.insert(r.get(0), (queued, parked));
            out.summary.backlog += queued;
            out.summary.parked += parked;
            let age: Option<f64> = r.get(3);
            out.summary.oldest_pending_seconds = match (out.summary.oldest_pending_seconds, age) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(out)
    }

    /// The journal's highest id: a local change journaled after it is newer
    /// than anything the down path decided so far.
    pub async fn journal_high_water(&self) -> Result<i64> {
        let row = self.client.query_one("SELECT coalesce(max(id), 0)::int8 FROM _sync_journal", &[]).await.map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Of `entries` (table, record id, journal id), those a local change
    /// journaled after that id supersedes.
    pub async fn superseded(&self, entries: &[(String, String, i64)]) -> Result<Vec<(String, String)>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let tables: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let ids: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
        let after: Vec<i64> = entries.iter().map(|e| e.2).collect();
        let rows = self
            .client
            .query(
                "SELECT e.t, e.r FROM unnest($1::text[], $2::text[], $3::int8[]) e(t, r, after)
                 WHERE EXISTS (SELECT 1 FROM _sync_journal p WHERE p.table_name = e.t AND p.record_id = e.r AND p.id > e.after)",
                &[&tables, &ids, &after],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Deletes up to `batch` delivered rows that the cursor passed more than
    /// `retention_hours` ago (parked rows stay until they are delivered)
    /// and, in the same statement, moves the slot's `pruned_through_lsn`
    /// past them and forgets the cursor's older moves. Returns the rows
    /// deleted.
    pub async fn prune_journal(&self, retention_hours: i32, batch: i64, slot: &str) -> Result<i64> {
        let r = self
            .client
            .query_one(
                "WITH cut AS (
                    SELECT coalesce(max(through_id), 0) AS id FROM _sync_push_log
                    WHERE pushed_at < now() - make_interval(hours => $1)),
                 d AS (
                    DELETE FROM _sync_journal WHERE id IN (
                        SELECT j.id FROM _sync_journal j, cut
                        WHERE j.id <= cut.id AND (j.parked_at IS NULL OR j.synced) ORDER BY j.id LIMIT $2)
                    RETURNING commit_lsn),
                 l AS (DELETE FROM _sync_push_log WHERE through_id < (SELECT id FROM cut)),
                 u AS (
                    UPDATE _sync_capture SET pruned_through_lsn = GREATEST(pruned_through_lsn, (SELECT max(commit_lsn) FROM d))
                    WHERE slot_name = $3 AND EXISTS (SELECT 1 FROM d) RETURNING 1)
                 SELECT count(*) FROM d",
                &[&retention_hours, &batch, &slot],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.get(0))
    }

    /// Journal rows per table and operation with a commit LSN in
    /// `[from, to]` (optionally only `tables`).
    pub async fn replay_summary(&self, from: Lsn, to: Option<Lsn>, tables: &[String]) -> Result<Vec<ReplayStat>> {
        let rows = self
            .client
            .query(
                "SELECT table_name::text, operation::text, count(*), min(commit_lsn)::text, max(commit_lsn)::text
             FROM _sync_journal
             WHERE commit_lsn >= $1 AND ($2::pg_lsn IS NULL OR commit_lsn <= $2)
               AND (cardinality($3::text[]) = 0 OR table_name = ANY($3))
             GROUP BY 1, 2 ORDER BY 1, 2",
                &[&PgLsn::from(from), &to.map(PgLsn::from), &tables],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| ReplayStat { table: r.get(0), operation: r.get(1), rows: r.get(2), min_lsn: r.get(3), max_lsn: r.get(4) })
            .collect())
    }

    /// Keys of `table` among `keys` with a local change upstream has not
    /// processed yet: journal rows after `processed` = (epoch, journal id)
    /// as the change feed reported it, or, when upstream has processed
    /// nothing of this clinic's, rows not yet delivered (after the cursor). Parked rows were
    /// processed (rejected). A pending TRUNCATE of the table holds every key.
    pub async fn pending_keys(
        &self,
        table: &str,
        keys: &[&str],
        processed: Option<(i32, i64)>,
        epochs: &[(i32, i64)],
    ) -> Result<Vec<String>> {
        // Journal ids after `processed`: ids above it in its epoch, and every id of a later epoch.
        let after_id: Option<i64> = processed.map(|(epoch, id)| {
            let next_epoch_start = epochs.iter().find(|(e, _)| *e > epoch).map(|(_, first)| *first);
            match next_epoch_start {
                Some(start) if start <= id => start - 1,
                _ => id,
            }
        });
        let rows = self
            .client
            .query(
                "SELECT DISTINCT k FROM unnest($2::text[]) AS k
                 WHERE EXISTS (SELECT 1 FROM _sync_journal p
                               WHERE p.table_name = $1 AND p.record_id = k AND p.parked_at IS NULL
                                 AND CASE WHEN $3::bigint IS NULL
                                          THEN NOT p.synced AND p.id > (SELECT through_id FROM _sync_push)
                                          ELSE p.id > $3 END)
                    OR EXISTS (SELECT 1 FROM _sync_journal p
                               WHERE p.table_name = $1 AND p.record_id IS NULL AND p.operation = 'TRUNCATE'
                                 AND p.parked_at IS NULL
                                 AND CASE WHEN $3::bigint IS NULL
                                          THEN NOT p.synced AND p.id > (SELECT through_id FROM _sync_push)
                                          ELSE p.id > $3 END)",
                &[&table, &keys, &after_id],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The most recently parked rows (at most `limit`), newest first.
    pub async fn parked_rows(&self, limit: i64) -> Result<Vec<super::ParkedRow>> {
        let rows = self
            .client
            .query(
                "SELECT id, table_name::text, record_id, operation::text, error, parked_at::text
                 FROM _sync_journal WHERE synced = FALSE AND parked_at IS NOT NULL
                 ORDER BY parked_at DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| super::ParkedRow {
                id: r.get(0),
                table: r.get(1),
                record_id: r.get(2),
                operation: r.get(3),
                error: r.get(4),
                parked_at: r.get(5),
            })
            .collect())
    }
}

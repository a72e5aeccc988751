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

use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_postgres::Client;

use crate::error::{Class, ErrorKind, Result, SyncError, class_of_sqlstate};
use crate::journal::{self, Operation, Queued};
use crate::store::Store;
use crate::upstream::{Outcome, Upstream};

const LOCAL: crate::error::At = crate::error::At::local("local database (pusher)");

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
}

/// A batch that failed as a whole, with the journal rows it covered.
#[derive(Debug)]
pub struct BatchFailure {
    pub error: SyncError,
    pub ids: Vec<i64>,
}

/// The upstream request built from a batch, and which journal rows each
/// element stands for.
pub(crate) struct Built {
    pub json: String,
    pub covers: Vec<Vec<i64>>,
    pub tables: Vec<String>,
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

/// Delivers one batch. `Ok` with `rows == 0` means the queue is empty.
pub async fn push_batch<U: Upstream>(
    local: &Client,
    upstream: &U,
    batch_size: usize,
    schema: Option<&str>,
    max_attempts: u32,
) -> std::result::Result<BatchReport, BatchFailure> {
    let rows = journal::next_batch(local, &journal::Source::Queue, batch_size as i64, 0)
        .await
        .map_err(|error| BatchFailure { error, ids: vec![] })?;
    if rows.is_empty() {
        return Ok(BatchReport::default());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let fail = |error| BatchFailure { error, ids: ids.clone() };
    let store = Store::new(local, LOCAL);
    let epochs = store.epochs().await.map_err(fail)?;
    let keys: Vec<(&str, &str)> = rows.iter().filter_map(|r| r.record_id.as_deref().map(|id| (r.table.as_str(), id))).collect();
    let bases = store.bases(&keys).await.map_err(fail)?;
    let built = build(&rows, schema, &epochs, &bases).map_err(fail)?;
    let outcome: Outcome = upstream.apply(&built.json).await.map_err(fail)?;
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
    };
    let store = Store::new(local, LOCAL);
    let write = async {
        local.batch_execute("BEGIN").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        store.mark_synced(&synced).await?;
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
            store.record_failure(c, &text, park).await?;
            store.record_table_error(&built.tables[r.index as usize], &text).await?;
        }
        for (table, n) in &per_table {
            store.record_synced_up(table, *n).await?;
        }
        store.record_hourly(crate::store::Direction::Up, per_table.values().sum()).await?;
        local.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        Ok::<_, SyncError>(())
    };
    if let Err(e) = write.await {
        let _ = local.batch_execute("ROLLBACK").await;
        return Err(BatchFailure { error: e, ids: vec![] });
    }
    Ok(report)
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

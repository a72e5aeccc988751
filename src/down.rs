//! Down path: brings upstream rows into the local database without echo.
//!
//! Per table, parents first (order derived from foreign keys), the poller
//! reads keyset pages on `(updated_at, pk)` from a cursor and applies each
//! page in one local transaction that also advances the table's watermark
//! (`_sync_metadata.last_sync_from_supabase[_id]`), so an interrupted
//! download resumes where it stopped and applies nothing twice.
//!
//! Rules:
//! - The cursor starts at the watermark, or `overlap_seconds` before now if
//!   that is earlier: a row that committed upstream late with an older
//!   `updated_at` (a long transaction) is re-read, and the idempotent apply
//!   absorbs the rows read again.
//! - Apply is last-write-wins against the local row; upstream wins ties, but
//!   an identical row is not rewritten.
//! - A row deleted locally is not resurrected by an older upstream version:
//!   the journal's DELETE entries act as tombstones. A delete that committed
//!   moments before the page may not be journaled yet, so a page that
//!   inserted rows waits, inside its transaction, until capture's progress
//!   passes the WAL position read by the inserting statement before it wrote,
//!   then re-checks the tombstones of exactly those rows and removes any it
//!   brought back.
//! - Writes run under the replication origin (the WAL consumer drops them:
//!   no echo) with `session_replication_role = replica` (local triggers that
//!   stamp `updated_at` do not fire; FK order inside a page cannot fail).
//! - A child whose parent is missing locally gets the parent fetched on
//!   demand (one deduplicated read per parent table), in the same
//!   transaction.
//! - Columns only one side has are left alone and reported once per table
//!   (per [`Session`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::{self, Table, quote_ident, quote_literal};
use crate::config::{Config, connect_local};
use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;
use crate::replication::wait_progress;
use crate::store::{self, Direction, LogEntry, Store};
use crate::upstream::{Cursor, TableRef, Upstream};

const LOCAL: crate::error::At = crate::error::At::local("local database (down path)");

/// Depth of on-demand parent fetches (grandparents and so on).
const MAX_PARENT_DEPTH: usize = 4;

/// How long a page waits for capture to journal concurrent local deletes.
const CAPTURE_WAIT: Duration = Duration::from_secs(30);

/// Rows a page inserted (not updated), by table, with the WAL position read
/// before the inserting statement wrote: candidates for the resurrection
/// check.
type Inserted = Vec<(String, Vec<String>, Lsn)>;

/// A local session whose writes carry the replication origin.
pub struct Session {
    client: Client,
    /// Tables whose one-sided columns were already reported.
    reported: Mutex<HashSet<String>>,
}

impl Session {
    pub async fn open(cfg: &Config) -> Result<Session> {
        let client = connect_local(cfg).await?;
        client.execute("SELECT pg_replication_origin_session_setup($1)", &[&cfg.sync.origin_name]).await.map_err(|e| {
            let err = SyncError::from_pg(LOCAL, &e);
            match err.code.as_deref() {
                Some("42704") => err.with_hint("the replication origin does not exist; run `centrovision-sync init`"),
                Some("55006") | Some("42P13") => {
                    err.with_hint("another process is using the replication origin; is a second centrovision-sync running?")
                }
                _ => err,
            }
        })?;
        Ok(Session { client, reported: Mutex::new(HashSet::new()) })
    }

    fn store(&self) -> Store<'_> {
        Store::new(&self.client, LOCAL)
    }

    /// Columns both sides have (writable locally), reporting the rest once
    /// per table.
    fn shared_columns(&self, table: &Table, upstream_keys: &[String]) -> Vec<String> {
        let local: Vec<&str> = table.columns.iter().filter(|c| !c.generated).map(|c| c.name.as_str()).collect();
        let shared: Vec<String> = local.iter().filter(|c| upstream_keys.iter().any(|k| k == *c)).map(|c| c.to_string()).collect();
        let only_up: Vec<&String> = upstream_keys.iter().filter(|k| !local.contains(&k.as_str())).collect();
        let only_local: Vec<&&str> = local.iter().filter(|c| !upstream_keys.iter().any(|k| k == **c)).collect();
        if (!only_up.is_empty() || !only_local.is_empty()) && self.reported.lock().expect("not poisoned").insert(table.name.clone()) {
            tracing::warn!(
                table = %table.name,
                only_upstream = ?only_up,
                only_local = ?only_local,
                "columns present on one side only are left alone"
            );
        }
        shared
    }
}

/// What one poll works with, passed down as one.
struct Ctx<'a, U> {
    cfg: &'a Config,
    session: &'a Session,
    upstream: &'a U,
    tables: &'a BTreeMap<String, Table>,
    /// Capture's progress: a page that inserted rows waits on it before
    /// trusting the journal's tombstones.
    progress: &'a watch::Receiver<Lsn>,
}

/// What one table's poll did.
#[derive(Debug, Default, Clone)]
pub struct TableReport {
    pub table: String,
    pub read: usize,
    pub applied: u64,
    pub parents_fetched: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

/// Polls every table once, parents first.
pub async fn cycle<U: Upstream>(
    cfg: &Config,
    session: &Session,
    upstream: &U,
    tables: &BTreeMap<String, Table>,
    progress: &watch::Receiver<Lsn>,
) -> Result<Vec<TableReport>> {
    let ctx = Ctx { cfg, session, upstream, tables, progress };
    let store = session.store();
    let order = catalog::parents_first(tables);
    let mut reports = Vec::with_capacity(order.len());
    for name in order {
        let table = &tables[&name];
        let started = Instant::now();
        let mut report = TableReport { table: name.clone(), ..Default::default() };
        let r = poll_table(&ctx, table, &mut report).await;
        report.duration = started.elapsed();
        let err_text = r.as_ref().err().map(|e| e.to_string());
        if let Some(e) = &err_text {
            report.error = Some(e.clone());
            let _ = store.record_table_error(&name, &format!("down: {e}")).await;
        }
        if report.read > 0 || r.is_err() {
            tracing::info!(
                table = %name, direction = "down", rows = report.applied, read = report.read,
                duration_ms = report.duration.as_millis() as u64, "down sync"
            );
        }
        let _ = store
            .log_sync(&LogEntry {
                direction: Direction::Down,
                table: Some(&name),
                records: report.applied as i32,
                error: err_text.as_deref(),
                duration_ms: report.duration.as_millis() as i32,
            })
            .await;
        reports.push(report);
        if let Err(e) = r {
            if !e.is_transient() && e.class() != crate::error::Class::Operator {
                continue;
            }
            // Connectivity problems end the cycle: the next one retries.
            if e.is_transient() {
                return Err(e);
            }
        }
    }
    Ok(reports)
}

async fn poll_table<U: Upstream>(ctx: &Ctx<'_, U>, table: &Table, report: &mut TableReport) -> Result<()> {
    let pk = table.pk().ok_or_else(|| SyncError::new(ErrorKind::Config, table.unsyncable_reason().unwrap_or_default()))?;
    let batch_size = ctx.cfg.sync.batch_size;
    let mut cursor = ctx.session.store().down_resume_cursor(&table.name, ctx.cfg.sync.overlap_seconds).await?;
    let tref = TableRef { name: &table.name, pk: &pk.name, pk_type: &pk.type_name };
    loop {
        let pulled = Instant::now();
        let page = ctx.upstream.pull(&tref, &cursor, batch_size).await?;
        tracing::debug!(table = %table.name, pull_ms = pulled.elapsed().as_millis() as u64, bytes = page.len(), "page pulled");
        let applied = apply_page(ctx, table, &page, true, report).await?;
        report.read += applied.read;
        report.applied += applied.applied;
        match applied.last {
            Some(last) if applied.read >= batch_size => cursor = last,
            _ => break,
        }
    }
    Ok(())
}

struct PageResult {
    read: usize,
    applied: u64,
    last: Option<Cursor>,
}

/// Applies one page (JSON array text) to `table` in one transaction that,
/// with `advance`, also advances the watermark.
async fn apply_page<U: Upstream>(
    ctx: &Ctx<'_, U>,
    table: &Table,
    page: &str,
    advance: bool,
    report: &mut TableReport,
) -> Result<PageResult> {
    let c = &ctx.session.client;
    let pk = table.pk().expect("checked by caller");
    let head = c
        .query_one(
            "SELECT jsonb_array_length(p), (SELECT array_agg(k) FROM jsonb_object_keys(p->0) k),
                    p->(jsonb_array_length(p)-1)->>'updated_at', p->(jsonb_array_length(p)-1)->>$2
             FROM (SELECT $1::text::jsonb AS p) s",
            &[&page, &pk.name],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e).with_hint("upstream returned rows that are not a JSON array"))?;
    let read = head.get::<_, i32>(0) as usize;
    if read == 0 {
        return Ok(PageResult { read: 0, applied: 0, last: None });
    }
    let keys: Vec<String> = head.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    let last = Cursor { updated_at: head.get(2), id: head.get(3) };
    if !keys.iter().any(|k| k == "updated_at") || !keys.contains(&pk.name) {
        return Err(SyncError::new(ErrorKind::Contract, format!("upstream rows of {} lack updated_at or {}", table.name, pk.name)));
    }
    let cols = ctx.session.shared_columns(table, &keys);

    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    let result = async {
        let mut inserted: Inserted = Vec::new();
        let t0 = Instant::now();
        let applied = upsert_rows(c, table, &cols, page, &mut inserted).await?;
        let t1 = Instant::now();
        repair_parents(ctx, table, page, 0, &mut inserted, report).await?;
        let t2 = Instant::now();
        undo_resurrections(c, ctx.tables, &inserted, ctx.progress).await?;
        tracing::debug!(
            table = %table.name,
            upsert_ms = (t1 - t0).as_millis() as u64,
            parents_ms = (t2 - t1).as_millis() as u64,
            capture_wait_ms = t2.elapsed().as_millis() as u64,
            "page applied"
        );
        if advance {
            ctx.session.store().advance_down_watermark(&table.name, &pk.type_name, &last, applied as i64).await?;
        }
        Ok::<u64, SyncError>(applied)
    }
    .await;
    match result {
        Ok(applied) => {
            c.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            crate::crash::point("down.after_page_commit");
            Ok(PageResult { read, applied, last: Some(last) })
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Applies upstream rows (a JSON array, e.g. from `fetch`) to `table` with
/// the same rules as a poll, without moving the watermark. `verify
/// --repair` uses it; its decisions already consulted the tombstones, so it
/// does not wait for capture.
pub async fn apply_rows<U: Upstream>(
    cfg: &Config,
    session: &Session,
    upstream: &U,
    tables: &BTreeMap<String, Table>,
    table: &Table,
    rows_json: &str,
) -> Result<u64> {
    let (_tx, no_wait) = watch::channel(Lsn::from_u64(u64::MAX));
    let ctx = Ctx { cfg, session, upstream, tables, progress: &no_wait };
    let mut report = TableReport::default();
    let r = apply_page(&ctx, table, rows_json, false, &mut report).await?;
    Ok(r.applied)
}

/// LWW upsert of upstream rows into the local table; returns rows written
/// and records the keys it inserted.
async fn upsert_rows(c: &Client, table: &Table, cols: &[String], rows_json: &str, inserted: &mut Inserted) -> Result<u64> {
    let pk = table.pk().expect("checked by caller");
    let t = table.qualified();
    let qpk = quote_ident(&pk.name);
    let list = cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let updates: Vec<String> = cols.iter().filter(|c| **c != pk.name).map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c))).collect();
    // Text forms: some types (json, point, xml) have no equality operator.
    let distinct_l = cols.iter().map(|c| format!("d.{}::text", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let distinct_r = cols.iter().map(|c| format!("EXCLUDED.{}::text", quote_ident(c))).collect::<Vec<_>>().join(", ");
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            "DO UPDATE SET {} WHERE d.updated_at < EXCLUDED.updated_at
               OR (d.updated_at = EXCLUDED.updated_at AND ROW({distinct_l}) IS DISTINCT FROM ROW({distinct_r}))",
            updates.join(", ")
        )
    };
    // `here` is read after the statement's snapshot and before its first
    // write (the insert's rows come through the join): every delete this
    // statement could have missed committed before it, and it is a record
    // boundary the walsender can reach without this transaction's WAL.
    let sql = format!(
        "WITH here AS MATERIALIZED (SELECT pg_current_wal_insert_lsn() AS lsn),
         w AS (
           INSERT INTO {t} AS d ({list})
           SELECT {list_s} FROM jsonb_populate_recordset(NULL::{t}, $1::text::jsonb) s CROSS JOIN here
           WHERE NOT {tombstoned}
           ON CONFLICT ({qpk}) {conflict}
           RETURNING d.xmax = 0 AS inserted, d.{qpk}::text AS id)
         SELECT count(*), coalesce(array_agg(id) FILTER (WHERE inserted), '{{}}'), (SELECT lsn FROM here) FROM w",
        // A tombstone counts only while the row is absent locally.
        tombstoned = store::tombstone_after(
            &quote_literal(&table.name),
            &format!("s.{qpk}::text"),
            "s.updated_at",
            Some(&format!("NOT EXISTS (SELECT 1 FROM {t} x WHERE x.{qpk} = s.{qpk})"))
        ),
        list_s = cols.iter().map(|c| format!("s.{}", quote_ident(c))).collect::<Vec<_>>().join(", "),
    );
    let row = c.query_one(&sql, &[&rows_json]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    let ids: Vec<String> = row.get(1);
    if !ids.is_empty() {
        let here: postgres_types::PgLsn = row.get(2);
        inserted.push((table.name.clone(), ids, Lsn::from(here)));
    }
    Ok(row.get::<_, i64>(0) as u64)
}

/// Closes the race between a local DELETE and its journaling: waits until
/// capture has journaled everything committed before this point of the
/// transaction, then deletes again any row this transaction inserted that a
/// now-visible tombstone says was deleted locally after its upstream version.
async fn undo_resurrections(
    c: &Client,
    tables: &BTreeMap<String, Table>,
    inserted: &Inserted,
    progress: &watch::Receiver<Lsn>,
) -> Result<()> {
    let Some(target) = inserted.iter().map(|(_, _, l)| *l).max() else {
        return Ok(());
    };
    tracing::trace!(target_lsn = %target, now = %*progress.borrow(), "waiting for capture");
    wait_progress(&mut progress.clone(), target, CAPTURE_WAIT).await?;
    for (name, ids, _) in inserted {
        let table = &tables[name];
        let pk = table.pk().expect("syncable");
        let qpk = quote_ident(&pk.name);
        let sql = format!(
            "DELETE FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[])
               AND {tombstoned}",
            t = table.qualified(),
            ty = pk.type_name,
            tombstoned = store::tombstone_after("$2", &format!("d.{qpk}::text"), "d.updated_at", None)
        );
        let n = c.execute(&sql, &[ids, name]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        if n > 0 {
            tracing::info!(table = %name, rows = n, "kept rows deleted locally while the page was applied");
        }
    }
    Ok(())
}

/// Fetches and applies parents that rows of `table` in `rows_json` refer to
/// but that are missing locally (same transaction).
fn repair_parents<'a, U: Upstream>(
    ctx: &'a Ctx<'a, U>,
    table: &'a Table,
    rows_json: &'a str,
    depth: usize,
    inserted: &'a mut Inserted,
    report: &'a mut TableReport,
) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        let (c, tables) = (&ctx.session.client, ctx.tables);
        if depth >= MAX_PARENT_DEPTH {
            return Ok(());
        }
        let t = table.qualified();
        let mut wanted: HashMap<&str, Vec<String>> = HashMap::new();
        for fk in &table.foreign_keys {
            let ([col], [pcol]) = (fk.columns.as_slice(), fk.parent_columns.as_slice()) else { continue };
            let Some(parent) = tables.get(&fk.parent_table) else { continue };
            if fk.parent_schema != table.schema || parent.pk().map(|p| &p.name) != Some(pcol) {
                continue;
            }
            let sql = format!(
                "SELECT DISTINCT s.{col}::text FROM jsonb_populate_recordset(NULL::{t}, $1::text::jsonb) s
                 WHERE s.{col} IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM {p} x WHERE x.{pcol} = s.{col})",
                col = quote_ident(col),
                pcol = quote_ident(pcol),
                p = parent.qualified()
            );
            let rows = c.query(&sql, &[&rows_json]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            if !rows.is_empty() {
                wanted.entry(parent.name.as_str()).or_default().extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
        }
        for (pname, mut ids) in wanted {
            ids.sort();
            ids.dedup();
            let parent = &tables[pname];
            let ppk = parent.pk().expect("syncable");
            let tref = TableRef { name: &parent.name, pk: &ppk.name, pk_type: &ppk.type_name };
            for chunk in ids.chunks(ctx.cfg.sync.batch_size.max(1)) {
                let json = ctx.upstream.fetch(&tref, chunk).await?;
                let keys: Vec<String> = c
                    .query_one("SELECT coalesce((SELECT array_agg(k) FROM jsonb_object_keys($1::text::jsonb->0) k), '{}')", &[&json])
                    .await
                    .map_err(|e| SyncError::from_pg(LOCAL, &e))?
                    .get(0);
                if keys.is_empty() {
                    continue;
                }
                let cols = ctx.session.shared_columns(parent, &keys);
                let n = upsert_rows(c, parent, &cols, &json, inserted).await?;
                report.parents_fetched += n;
                tracing::info!(table = %table.name, parent = %pname, rows = n, "fetched missing parents");
                repair_parents(ctx, parent, &json, depth + 1, inserted, report).await?;
            }
        }
        Ok(())
    })
}

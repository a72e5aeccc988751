//! Down path: brings other writers' upstream changes into the local
//! database without echo, in upstream commit order.
//!
//! The source is the upstream change feed ([`crate::feed`]): every version
//! another clinic or the cloud app committed since the last poll, deletes
//! included, this clinic's own writes left out. Each page is applied in one
//! local transaction together with the feed cursor of the tables it covers,
//! so an interrupted download resumes where it stopped.
//!
//! Rules (see [`crate::feed`] for the feed's own):
//! - The page first locks the local rows it touches, then waits until
//!   capture has journaled every local commit before that moment.
//! - A row with a local change that upstream has not processed yet (journal
//!   rows after the `progress` the feed reported) is left alone: upstream
//!   decides between the two when the change arrives, and re-emits the
//!   winner if the local change loses. Every other row takes the upstream
//!   version as it is (an identical row is not rewritten): upstream has
//!   already decided between it and anything this clinic sent.
//! - Writes run under the replication origin (the WAL consumer drops them:
//!   no echo) with `session_replication_role = replica` (local triggers that
//!   stamp `updated_at` do not fire; FK order inside a page cannot fail).
//! - A child whose parent is missing locally gets the parent fetched on
//!   demand (one deduplicated read per parent table), in the same
//!   transaction.
//! - Columns only one side has are left alone and reported once per table
//!   (per [`Session`]).
//! - A row the local table rejects with a data error (a local CHECK, a type
//!   mismatch) does not stop the table: the page's rows are bisected under
//!   savepoints down to the rows at fault, which are parked in
//!   `_sync_down_parked` with their version, image and error, in the page's
//!   transaction, while the rest is written and the cursor moves past them
//!   (so a parked row is kept, not lost). Each cycle first retries the
//!   parked rows under the same rules (locks, capture wait); an entry leaves
//!   when its record is applied (by the retry, or a newer version or a delete
//!   from the feed), or when a local change journaled after it supersedes it
//!   (that change goes up; upstream decides). `status` shows them.
//!
//! [`apply_rows`] (for `verify --repair`) keeps the earlier rule: last write
//! wins on `updated_at`, journal tombstones respected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::{self, Table, quote_ident};
use crate::config::{Config, connect_journal, connect_local};
use crate::error::{Class, ErrorKind, Result, SyncError};
use crate::feed;
use crate::lsn::Lsn;
use crate::replication::wait_progress;
use crate::scope::Scopes;
use crate::store::{self, Direction, JournalStore, LogEntry, Store};
use crate::upstream::{FeedRequest, TableRef, Upstream};
use serde_json::value::RawValue;

const LOCAL: crate::error::At = crate::error::At::local("local database (down path)");
const JOURNAL: crate::error::At = crate::error::At::local("journal database (down path)");

/// Depth of on-demand parent fetches (grandparents and so on).
const MAX_PARENT_DEPTH: usize = 4;

/// How long a page waits for capture to journal concurrent local deletes.
const CAPTURE_WAIT: Duration = Duration::from_secs(30);

/// Rows a page inserted (not updated), by table, with the WAL position read
/// before the inserting statement wrote: candidates for the resurrection
/// check.
type Inserted = Vec<(String, Vec<String>, Lsn)>;

/// A local session whose writes carry the replication origin, and a
/// connection to the journal database its decisions consult.
pub struct Session {
    client: Client,
    journal: Client,
    /// Tables whose one-sided columns were already reported.
    reported: Mutex<HashSet<String>>,
}

impl Session {
    /// Lets go of the replication origin now, so the next session (the next
    /// step of a command, or the next command) can set it up at once.
    /// (Dropping the session frees it too, once the server notices.)
    pub async fn close(self) {
        if let Err(e) = self.client.batch_execute("SELECT pg_replication_origin_session_reset()").await {
            tracing::debug!(error = %e, "down session: origin reset failed; the server resets it with the connection");
        }
    }

    pub async fn open(cfg: &Config) -> Result<Session> {
        let client = connect_local(cfg).await?;
        // An instance that just stopped may hold the origin a moment longer
        // (until its server session notices it is gone): wait for it.
        let grace = crate::service::Grace::start();
        loop {
            let Err(e) = client.execute("SELECT pg_replication_origin_session_setup($1)", &[&cfg.sync.origin_name]).await else {
                break;
            };
            let err = SyncError::from_pg(LOCAL, &e);
            if err.code.as_deref() == Some("55006") && grace.pause().await {
                continue;
            }
            return Err(match err.code.as_deref() {
                Some("42704") => err.with_hint("the replication origin does not exist; run `centrovision-sync init`"),
                Some("55006") | Some("42P13") => {
                    err.with_hint("another process is using the replication origin; is a second centrovision-sync running?")
                }
                _ => err,
            });
        }
        let journal = connect_journal(cfg).await?;
        let session = Session { client, journal, reported: Mutex::new(HashSet::new()) };
        // Once per session, not per cycle: an installation upgraded without
        // `init` gets the moved-row notes' table before the first cycle reads it.
        session.journal().ensure_moved_away().await?;
        Ok(session)
    }

    fn store(&self) -> Store<'_> {
        Store::new(&self.client, LOCAL)
    }

    /// The journal, as this session's decisions consult it.
    pub fn journal(&self) -> JournalStore<'_> {
        JournalStore::new(&self.journal, JOURNAL)
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
    /// This server's branch scope ([`crate::scope`]).
    scopes: &'a Scopes,
    /// `scopes` as the feed's `scope` argument (None: unscoped).
    scope_arg: Option<&'a serde_json::Value>,
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

/// Reads the change feed until every table has caught up, applying each
/// page; reports per table.
pub async fn cycle<U: Upstream>(
    cfg: &Config,
    session: &Session,
    upstream: &U,
    tables: &BTreeMap<String, Table>,
    progress: &watch::Receiver<Lsn>,
) -> Result<Vec<TableReport>> {
    let scopes = crate::scope::resolve(cfg, tables)?;
    let scope_arg = scopes.feed_arg();
    let ctx = Ctx { cfg, session, upstream, tables, progress, scopes: &scopes, scope_arg: scope_arg.as_ref() };
    let store = session.store();
    let started = Instant::now();
    let order = catalog::parents_first(tables);
    follow_branch_set(&store, &scopes, &order).await?;
    let mut reports: BTreeMap<String, TableReport> =
        order.iter().map(|n| (n.clone(), TableReport { table: n.clone(), ..Default::default() })).collect();
    let r = match retry_parked(&ctx, &order, &mut reports).await {
        Ok(()) => read_feed(&ctx, &order, &mut reports).await,
        Err(e) => Err(e),
    };
    let elapsed = started.elapsed();
    let err_text = r.as_ref().err().map(|e| e.to_string());
    // Tables missing upstream: reported on their own rows, the others synced.
    let missing: Vec<String> = order.iter().filter(|n| reports[n.as_str()].error.is_some()).cloned().collect();
    let duration_ms = elapsed.as_millis() as i32;
    for name in &order {
        let report = reports.get_mut(name).expect("one per table");
        report.duration = elapsed;
        if let Some(e) = &err_text {
            report.error = Some(e.clone());
        }
        if let Some(e) = &report.error {
            let _ = store.record_table_error(name, &format!("down: {e}")).await;
        }
        if report.read > 0 {
            tracing::info!(
                table = %name, direction = "down", rows = report.applied, read = report.read,
                duration_ms = elapsed.as_millis() as u64, "down sync"
            );
        }
    }
    // The cycle's `_sync_log` rows, one per table, in one statement.
    let entries: Vec<LogEntry<'_>> = order
        .iter()
        .map(|name| {
            let report = &reports[name.as_str()];
            LogEntry {
                direction: Direction::Down,
                table: Some(name),
                records: report.applied as i32,
                error: report.error.as_deref(),
                duration_ms,
            }
        })
        .collect();
    let _ = store.log_sync_all(&entries).await;
    r?;
    if !missing.is_empty() {
        return Err(SyncError::new(
            ErrorKind::MissingObject,
            format!("these synced tables do not exist upstream (schema {}): {}", cfg.supabase.schema, missing.join(", ")),
        )
        .with_hint(
            "create them in Supabase (run the schema migration), or remove them from [sync] tables; the other tables keep syncing",
        ));
    }
    Ok(order.iter().map(|n| reports.remove(n).expect("one per table")).collect())
}

/// Retries the rows parked by earlier pages (`_sync_down_parked`), in one
/// local transaction under the same rules as a page: lock the records, wait
/// for capture, drop the entries a later local change supersedes, write the
/// rest (bisecting again); an applied record leaves the table, a rejected
/// one stays with the new error.
async fn retry_parked<U: Upstream>(ctx: &Ctx<'_, U>, order: &[String], reports: &mut BTreeMap<String, TableReport>) -> Result<()> {
    let c = &ctx.session.client;
    let store = ctx.session.store();
    let q = |e| SyncError::from_pg(LOCAL, &e);
    if store.down_parked(order).await?.is_empty() {
        return Ok(());
    }
    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(q)?;
    let result = async {
        for name in order {
            let keys: Vec<String> = store.down_parked(std::slice::from_ref(name)).await?.into_iter().map(|p| p.record_id).collect();
            if !keys.is_empty() {
                lock_rows(c, &ctx.tables[name.as_str()], &keys.iter().map(String::as_str).collect::<Vec<_>>()).await?;
            }
        }
        let flushed: postgres_types::PgLsn = c.query_one("SELECT pg_current_wal_flush_lsn()", &[]).await.map_err(q)?.get(0);
        wait_progress(&mut ctx.progress.clone(), Lsn::from(flushed), CAPTURE_WAIT).await?;
        let journal = ctx.session.journal();
        let superseded = store.drop_down_parked(&journal.superseded(&store.down_parked_marks().await?).await?).await?;
        if superseded > 0 {
            tracing::info!(rows = superseded, "parked upstream rows superseded by later local changes: dropped");
        }
        let high_water = journal.journal_high_water().await?;
        let mut total = 0i64;
        for name in order {
            let parked = store.down_parked(std::slice::from_ref(name)).await?;
            if parked.is_empty() {
                continue;
            }
            let table = &ctx.tables[name.as_str()];
            let images: Vec<Box<RawValue>> = parked
                .iter()
                .map(|p| RawValue::from_string(p.row.clone()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| SyncError::new(ErrorKind::Decode, format!("a parked row of {name} is not JSON: {e}")))?;
            let rows: Vec<&RawValue> = images.iter().map(|b| &**b).collect();
            let report = reports.get_mut(name.as_str()).expect("one per table");
            let (n, failed) = write_parking(ctx, table, &rows, report).await?;
            let errors: Vec<String> = failed.iter().map(|(_, e)| e.to_string()).collect();
            let again: Vec<store::ToPark<'_>> = failed
                .iter()
                .zip(&errors)
                .map(|((i, _), error)| store::ToPark {
                    record_id: &parked[*i].record_id,
                    version: parked[*i].version,
                    row: &parked[*i].row,
                    error,
                })
                .collect();
            store.park_down(name, &again, high_water).await?;
            let applied: Vec<&str> =
                parked.iter().enumerate().filter(|(i, _)| !failed.iter().any(|(f, _)| f == i)).map(|(_, p)| p.record_id.as_str()).collect();
            let versions: Vec<i64> =
                parked.iter().enumerate().filter(|(i, _)| !failed.iter().any(|(f, _)| f == i)).map(|(_, p)| p.version).collect();
            store.record_bases(name, &applied, &versions).await?;
            store.clear_down_parked(name, &applied).await?;
            tracing::info!(table = %name, applied = applied.len(), still_parked = failed.len(), "retried parked upstream rows");
            report.applied += n;
            total += n as i64;
        }
        store.record_hourly(Direction::Down, total).await?;
        Ok::<(), SyncError>(())
    }
    .await;
    match result {
        Ok(()) => c.batch_execute("COMMIT").await.map_err(q),
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Locks the local rows of `keys` (sorted: one order for every transaction).
async fn lock_rows(c: &Client, table: &Table, keys: &[&str]) -> Result<()> {
    let pk = table.pk().expect("syncable");
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    c.query_one(
        &format!(
            "SELECT count(*) FROM (SELECT 1 FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[]) ORDER BY d.{qpk} FOR UPDATE) q",
            t = table.qualified(),
            qpk = quote_ident(&pk.name),
            ty = pk.type_name
        ),
        &[&keys],
    )
    .await
    .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    Ok(())
}

/// One feed reading: tables never read before are first caught up to the
/// window the others stand at (so afterwards one call per page serves all),
/// then every group of tables sharing a cursor reads until its window is done.
async fn read_feed<U: Upstream>(ctx: &Ctx<'_, U>, order: &[String], reports: &mut BTreeMap<String, TableReport>) -> Result<()> {
    let store = ctx.session.store();
    let rows = store.feed_cursors(order, ctx.cfg.sync.overlap_seconds).await?;
    let mut cursors: BTreeMap<String, feed::Cursor> = BTreeMap::new();
    let mut since: HashMap<String, Option<String>> = HashMap::new();
    for (t, c, s) in rows {
        cursors.insert(t.clone(), c);
        since.insert(t, s);
    }
    // The window the tables already read stand at, if they are at a boundary.
    let main = feed::groups(&cursors).into_iter().find(|(c, _)| c.prev.is_some()).map(|(c, _)| c).filter(|c| c.target.is_none());
    if let Some(main) = main {
        let fresh: Vec<String> = cursors.iter().filter(|(_, c)| **c == feed::Cursor::default()).map(|(t, _)| t.clone()).collect();
        if !fresh.is_empty() {
            tracing::info!(tables = ?fresh, "catching up tables read for the first time");
            let start = feed::Cursor { prev: None, target: main.prev.clone(), after: 0 };
            let s = common_since(&fresh, &since);
            let end = read_group(ctx, &fresh, start, s.as_deref(), reports).await?;
            debug_assert_eq!(end, main);
            for t in fresh {
                cursors.insert(t, end.clone());
            }
        }
    }
    for (cursor, group) in feed::groups(&cursors) {
        let s = if cursor.prev.is_none() { common_since(&group, &since) } else { None };
        read_group(ctx, &group, cursor, s.as_deref(), reports).await?;
    }
    Ok(())
}

/// The `since` of a group: the earliest, and none if any table has none.
fn common_since(tables: &[String], since: &HashMap<String, Option<String>>) -> Option<String> {
    let all: Option<Vec<&String>> = tables.iter().map(|t| since.get(t).and_then(|s| s.as_ref())).collect();
    all.and_then(|v| v.into_iter().min().cloned())
}

/// Reads pages for `group` from `cursor` until the window is complete;
/// returns the final cursor.
async fn read_group<U: Upstream>(
    ctx: &Ctx<'_, U>,
    group: &[String],
    mut cursor: feed::Cursor,
    since: Option<&str>,
    reports: &mut BTreeMap<String, TableReport>,
) -> Result<feed::Cursor> {
    loop {
        let req = FeedRequest {
            schema: &ctx.cfg.supabase.schema,
            tables: group,
            prev: cursor.prev.as_deref(),
            target: cursor.target.as_deref(),
            after: cursor.after,
            limit: ctx.cfg.sync.batch_size as i64,
            since,
            scope: ctx.scope_arg,
        };
        let pulled = Instant::now();
        let text = ctx.upstream.changes(&req).await?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
            return Err(SyncError::new(
                ErrorKind::UpstreamUnreachable,
                format!(
                    "upstream answered the change feed of {} with something that is not JSON ({} bytes, starting {:?})",
                    group.join(", "),
                    text.len(),
                    text.chars().take(40).collect::<String>()
                ),
            )
            .with_hint("a proxy or captive portal may be in the way; the page will be read again"));
        }
        let page: feed::Page = serde_json::from_str(&text).map_err(|e| {
            SyncError::new(ErrorKind::Contract, format!("the upstream change feed answered something unexpected ({e})"))
                .with_hint("the upstream SQL may be outdated: run `centrovision-sync init --upstream`, or paste `init --print-upstream-sql` into the Supabase SQL editor")
        })?;
        tracing::debug!(tables = group.len(), changes = page.changes.len(), pull_ms = pulled.elapsed().as_millis() as u64, "feed page");
        if page.horizon_passed {
            tracing::error!(
                "this clinic last read the change feed before upstream pruned old tombstones: deletes made meanwhile \
                 may be missing here; run `centrovision-sync verify --repair`"
            );
        }
        for t in &page.missing {
            if let Some(r) = reports.get_mut(t)
                && r.error.is_none()
            {
                r.error = Some(format!("the upstream table {t} does not exist (schema {})", ctx.cfg.supabase.schema));
            }
        }
        if page.restarted {
            tracing::warn!(
                "the change feed's cursor is ahead of the upstream database (it was restored from a backup): \
                 reading the feed from the beginning again"
            );
        }
        let next = cursor.advanced(&page);
        // Inside the first window every in-scope row comes through the feed itself.
        let incremental = cursor.prev.is_some() && !page.restarted;
        apply_feed_page(ctx, &page, group, &next, incremental, reports).await?;
        cursor = next;
        if page.complete {
            return Ok(cursor);
        }
    }
}

/// Applies one feed page and moves the cursor of `group`, in one local
/// transaction (see the module docs for the rules).
async fn apply_feed_page<U: Upstream>(
    ctx: &Ctx<'_, U>,
    page: &feed::Page,
    group: &[String],
    next: &feed::Cursor,
    incremental: bool,
    reports: &mut BTreeMap<String, TableReport>,
) -> Result<()> {
    let c = &ctx.session.client;
    let store = ctx.session.store();
    let q = |e| SyncError::from_pg(LOCAL, &e);
    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(q)?;
    let result = async {
        let by_table = feed::split(page);
        let mut applied: HashMap<&str, u64> = HashMap::new();
        if !by_table.is_empty() {
            let order: Vec<&String> = catalog::parents_first(ctx.tables)
                .iter()
                .filter_map(|n| ctx.tables.get_key_value(n).map(|(k, _)| k))
                .filter(|n| by_table.contains_key(n.as_str()))
                .collect();
            // 1. Lock the local rows the page touches (sorted: one order for every page).
            for name in &order {
                let (table, changes) = (&ctx.tables[name.as_str()], &by_table[name.as_str()]);
                let keys: Vec<&str> =
                    changes.upsert_keys.iter().chain(changes.deletes.iter()).chain(changes.outs.iter()).copied().collect();
                lock_rows(c, table, &keys).await?;
            }
            // 2. Every local commit before the locks is journaled before we decide.
            let flushed: postgres_types::PgLsn = c.query_one("SELECT pg_current_wal_flush_lsn()", &[]).await.map_err(q)?.get(0);
            wait_progress(&mut ctx.progress.clone(), Lsn::from(flushed), CAPTURE_WAIT).await?;
            // 3. Rows with a local change upstream has not processed stay as they are.
            let processed = page.progress.as_ref().map(|p| (p.epoch, p.journal_id));
            let journal = ctx.session.journal();
            let epochs = journal.epochs().await?;
            for name in &order {
                let (table, changes) = (&ctx.tables[name.as_str()], &by_table[name.as_str()]);
                let pk = table.pk().expect("syncable");
                let all: Vec<&str> = changes.upsert_keys.iter().chain(changes.deletes.iter()).copied().collect();
                let mut asked = all.clone();
                asked.extend(changes.outs.iter().copied());
                let pending: HashSet<String> = journal.pending_keys(name, &asked, processed, &epochs).await?.into_iter().collect();
                if !pending.is_empty() {
                    tracing::debug!(table = %name, rows = pending.len(), "left alone: local changes upstream has not processed yet");
                }
                let report = reports.get_mut(name.as_str()).expect("one per table");
                report.read += all.len();
                // 4. Write; a row the local table rejects is parked alone.
                let (rows, row_keys): (Vec<&RawValue>, Vec<&str>) =
                    changes.upserts.iter().zip(&changes.upsert_keys).filter(|(_, k)| !pending.contains(**k)).map(|(r, k)| (*r, *k)).unzip();
                let mut n = 0u64;
                let mut rejected: HashSet<&str> = HashSet::new();
                // Rows that arrive here for the first time after the first window
                // (e.g. moved into this server's branches): their via-children never
                // passed the scope before, so they are fetched with them.
                let arriving = if incremental && ctx.scopes.scoped() && !ctx.scopes.children_of(name).is_empty() {
                    absent_keys(c, table, &row_keys).await?
                } else {
                    Vec::new()
                };
                if !rows.is_empty() {
                    let (written, failed) = write_parking(ctx, table, &rows, report).await?;
                    n += written;
                    if !failed.is_empty() {
                        let high_water = journal.journal_high_water().await?;
                        let images: Vec<String> = failed.iter().map(|(i, _)| rows[*i].get().to_string()).collect();
                        let errors: Vec<String> = failed.iter().map(|(_, e)| e.to_string()).collect();
                        let park: Vec<store::ToPark<'_>> = failed
                            .iter()
                            .zip(images.iter().zip(&errors))
                            .map(|((i, _), (row, error))| store::ToPark {
                                record_id: row_keys[*i],
                                version: changes.versions[row_keys[*i]],
                                row,
                                error,
                            })
                            .collect();
                        for ((i, e), p) in failed.iter().zip(&park) {
                            // The error's detail may quote row values: the table keeps it, the log does not.
                            tracing::warn!(
                                table = %name, key = %p.record_id, code = e.code.as_deref().unwrap_or(""),
                                "upstream row rejected by the local table: parked, the rest of the page applied"
                            );
                            rejected.insert(row_keys[*i]);
                        }
                        store.park_down(name, &park, high_water).await?;
                    }
                }
                if !arriving.is_empty() {
                    report.parents_fetched += fetch_children(ctx, table, &arriving, 0).await?;
                }
                let deletes: Vec<&str> = changes.deletes.iter().filter(|k| !pending.contains(**k)).copied().collect();
                if !deletes.is_empty() {
                    n += c
                        .execute(
                            &format!(
                                "DELETE FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[])",
                                t = table.qualified(),
                                qpk = quote_ident(&pk.name),
                                ty = pk.type_name
                            ),
                            &[&deletes],
                        )
                        .await
                        .map_err(q)?;
                }
                // 5. Rows that left this server's branches (crate::scope).
                let outs: Vec<&str> = changes.outs.iter().filter(|k| !pending.contains(**k)).copied().collect();
                if !outs.is_empty() {
                    n += remove_out_of_scope(ctx, table, &outs).await?;
                }
                // What each written row now stands on upstream (sent back as `b` with the next local change).
                let written: Vec<&str> = all.iter().copied().filter(|k| !pending.contains(*k) && !rejected.contains(*k)).collect();
                let versions: Vec<i64> = written.iter().map(|k| changes.versions[k]).collect();
                store.record_bases(name, &written, &versions).await?;
                // A record applied (or deleted) here is no longer parked.
                store.clear_down_parked(name, &written).await?;
                report.applied += n;
                applied.insert(name.as_str(), n);
            }
        }
        let counts: Vec<i64> = group.iter().map(|t| applied.get(t.as_str()).copied().unwrap_or(0) as i64).collect();
        store.advance_feed(group, &counts, next).await?;
        store.record_hourly(Direction::Down, counts.iter().sum()).await?;
        Ok::<(), SyncError>(())
    }
    .await;
    match result {
        Ok(()) => {
            c.batch_execute("COMMIT").await.map_err(q)?;
            crate::crash::point("down.after_page_commit");
            Ok(())
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Writes `rows` of `table` as they are ([`write_rows`]) and fetches their
/// missing parents; returns rows written and the rows the local table
/// rejected with a data error (by index in `rows`), found by bisecting under
/// savepoints, the others written.
async fn write_parking<U: Upstream>(
    ctx: &Ctx<'_, U>,
    table: &Table,
    rows: &[&RawValue],
    report: &mut TableReport,
) -> Result<(u64, Vec<(usize, SyncError)>)> {
    let c = &ctx.session.client;
    let json = serde_json::to_string(rows).expect("raw JSON serializes");
    let keys: Vec<String> = c
        .query_one("SELECT coalesce((SELECT array_agg(k) FROM jsonb_object_keys($1::text::jsonb->0) k), '{}')", &[&json])
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?
        .get(0);
    let cols = ctx.session.shared_columns(table, &keys);
    let mut failed = Vec::new();
    let n = bisect_rows(c, table, &cols, rows, 0, &mut failed).await?;
    let json = if failed.is_empty() {
        json
    } else {
        let kept: Vec<&RawValue> = rows.iter().enumerate().filter(|(i, _)| !failed.iter().any(|(f, _)| f == i)).map(|(_, r)| *r).collect();
        serde_json::to_string(&kept).expect("raw JSON serializes")
    };
    if failed.len() < rows.len() {
        let mut none = Vec::new();
        repair_parents(ctx, table, &json, 0, &mut none, report).await?;
    }
    Ok((n, failed))
}

/// [`write_rows`] under a savepoint; when the local table rejects the rows
/// with a data error (a CHECK, a type mismatch), rolls back to it and tries
/// each half, down to the single rows at fault, which are added to `failed`
/// (index in the page's rows: `offset` + index in `rows`). Other errors end
/// the page as before.
fn bisect_rows<'a>(
    c: &'a Client,
    table: &'a Table,
    cols: &'a [String],
    rows: &'a [&'a RawValue],
    offset: usize,
    failed: &'a mut Vec<(usize, SyncError)>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>> {
    Box::pin(async move {
        let q = |e| SyncError::from_pg(LOCAL, &e);
        let json = serde_json::to_string(rows).expect("raw JSON serializes");
        c.batch_execute("SAVEPOINT centrovision_sync_rows").await.map_err(q)?;
        match write_rows(c, table, cols, &json).await {
            Ok(n) => {
                c.batch_execute("RELEASE SAVEPOINT centrovision_sync_rows").await.map_err(q)?;
                Ok(n)
            }
            Err(e) if e.class() == Class::Data => {
                c.batch_execute("ROLLBACK TO SAVEPOINT centrovision_sync_rows; RELEASE SAVEPOINT centrovision_sync_rows")
                    .await
                    .map_err(q)?;
                if rows.len() == 1 {
                    failed.push((offset, e));
                    return Ok(0);
                }
                let mid = rows.len() / 2;
                let left = bisect_rows(c, table, cols, &rows[..mid], offset, failed).await?;
                let right = bisect_rows(c, table, cols, &rows[mid..], offset + mid, failed).await?;
                Ok(left + right)
            }
            Err(e) => Err(e),
        }
    })
}

/// Writes upstream rows as they are (upsert), except rows identical to the
/// local one; returns rows written.
async fn write_rows(c: &Client, table: &Table, cols: &[String], rows_json: &str) -> Result<u64> {
    let pk = table.pk().expect("syncable");
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
        format!("DO UPDATE SET {} WHERE ROW({distinct_l}) IS DISTINCT FROM ROW({distinct_r})", updates.join(", "))
    };
    let sql = format!(
        "INSERT INTO {t} AS d ({list})
         SELECT {list_s} FROM jsonb_populate_recordset(NULL::{t}, $1::text::jsonb) s
         ON CONFLICT ({qpk}) {conflict}",
        list_s = cols.iter().map(|c| format!("s.{}", quote_ident(c))).collect::<Vec<_>>().join(", "),
    );
    c.execute(&sql, &[&rows_json]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))
}

/// Applies rows (JSON array text) to `table` in one transaction, last write
/// wins on `updated_at` (for `verify --repair`).
async fn apply_page<U: Upstream>(ctx: &Ctx<'_, U>, table: &Table, page: &str, report: &mut TableReport) -> Result<u64> {
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
        return Ok(0);
    }
    let keys: Vec<String> = head.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    if !keys.iter().any(|k| k == "updated_at") || !keys.contains(&pk.name) {
        return Err(SyncError::new(ErrorKind::Contract, format!("upstream rows of {} lack updated_at or {}", table.name, pk.name)));
    }
    let cols = ctx.session.shared_columns(table, &keys);

    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    let result = async {
        let mut inserted: Inserted = Vec::new();
        let t0 = Instant::now();
        let applied = upsert_rows(c, &ctx.session.journal(), table, &cols, page, &mut inserted).await?;
        let t1 = Instant::now();
        repair_parents(ctx, table, page, 0, &mut inserted, report).await?;
        let t2 = Instant::now();
        undo_resurrections(c, &ctx.session.journal(), ctx.tables, &inserted, ctx.progress).await?;
        tracing::debug!(
            table = %table.name,
            upsert_ms = (t1 - t0).as_millis() as u64,
            parents_ms = (t2 - t1).as_millis() as u64,
            capture_wait_ms = t2.elapsed().as_millis() as u64,
            "page applied"
        );
        Ok::<u64, SyncError>(applied)
    }
    .await;
    match result {
        Ok(applied) => {
            c.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            Ok(applied)
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
    let scopes = crate::scope::resolve(cfg, tables)?;
    let ctx = Ctx { cfg, session, upstream, tables, progress: &no_wait, scopes: &scopes, scope_arg: None };
    let mut report = TableReport::default();
    apply_page(&ctx, table, rows_json, &mut report).await
}

/// LWW upsert of upstream rows into the local table; returns rows written
/// and records the keys it inserted.
async fn upsert_rows(
    c: &Client,
    journal: &JournalStore<'_>,
    table: &Table,
    cols: &[String],
    rows_json: &str,
    inserted: &mut Inserted,
) -> Result<u64> {
    let pk = table.pk().expect("checked by caller");
    let keys = row_keys(rows_json, &pk.name)?;
    let tombstones = journal.tombstones(&table.name, &keys.iter().map(String::as_str).collect::<Vec<_>>()).await?;
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
    // A tombstone counts only while the row is absent locally.
    let tombstoned = format!(
        "({} AND NOT EXISTS (SELECT 1 FROM {t} x WHERE x.{qpk} = s.{qpk}))",
        store::tombstoned("$2", &format!("s.{qpk}::text"), "s.updated_at")
    );
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
        list_s = cols.iter().map(|c| format!("s.{}", quote_ident(c))).collect::<Vec<_>>().join(", "),
    );
    let row = c.query_one(&sql, &[&rows_json, &tombstones]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    let ids: Vec<String> = row.get(1);
    if !ids.is_empty() {
        let here: postgres_types::PgLsn = row.get(2);
        inserted.push((table.name.clone(), ids, Lsn::from(here)));
    }
    Ok(row.get::<_, i64>(0) as u64)
}

/// The primary-key values of the rows in `rows_json` (a JSON array of
/// objects) as text, the form the journal's record ids take: a JSON string
/// unquoted, any other scalar as written.
fn row_keys(rows_json: &str, pk: &str) -> Result<Vec<String>> {
    let rows: Vec<HashMap<String, &RawValue>> = serde_json::from_str(rows_json)
        .map_err(|e| SyncError::new(ErrorKind::Decode, format!("upstream rows are not a JSON array of objects: {e}")))?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(v) = r.get(pk) else { continue };
        let raw = v.get();
        if raw.starts_with('"') {
            keys.push(
                serde_json::from_str::<String>(raw)
                    .map_err(|e| SyncError::new(ErrorKind::Decode, format!("upstream key is not a JSON string: {e}")))?,
            );
        } else if raw != "null" {
            keys.push(raw.to_string());
        }
    }
    Ok(keys)
}

/// Closes the race between a local DELETE and its journaling: waits until
/// capture has journaled everything committed before this point of the
/// transaction, then deletes again any row this transaction inserted that a
/// now-visible tombstone says was deleted locally after its upstream version.
async fn undo_resurrections(
    c: &Client,
    journal: &JournalStore<'_>,
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
        let tombstones = journal.tombstones(name, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        if tombstones == "{}" {
            continue;
        }
        let sql = format!(
            "DELETE FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[])
               AND {tombstoned}",
            t = table.qualified(),
            ty = pk.type_name,
            tombstoned = store::tombstoned("$2", &format!("d.{qpk}::text"), "d.updated_at")
        );
        let n = c.execute(&sql, &[ids, &tombstones]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
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
            let tref = TableRef::new(parent, ppk);
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
                let n = upsert_rows(c, &ctx.session.journal(), parent, &cols, &json, inserted).await?;
                report.parents_fetched += n;
                tracing::info!(table = %table.name, parent = %pname, rows = n, "fetched missing parents");
                repair_parents(ctx, parent, &json, depth + 1, inserted, report).await?;
            }
        }
        Ok(())
    })
}

/// Keys among `keys` that `table` does not have locally.
async fn absent_keys(c: &Client, table: &Table, keys: &[&str]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let pk = table.pk().expect("syncable");
    let sql = format!(
        "SELECT k FROM unnest($1::text[]) k WHERE NOT EXISTS (SELECT 1 FROM {t} d WHERE d.{qpk}::text = k)",
        t = table.qualified(),
        qpk = quote_ident(&pk.name)
    );
    let rows = c.query(&sql, &[&keys]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Fetches from upstream the via-children ([`Scopes::children_of`]) of the
/// rows `keys` of `parent` that just arrived here, and theirs, by foreign
/// key; writes them as they are. Returns rows written.
fn fetch_children<'a, U: Upstream>(
    ctx: &'a Ctx<'a, U>,
    parent: &'a Table,
    keys: &'a [String],
    depth: usize,
) -> std::pin::Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>> {
    Box::pin(async move {
        let c = &ctx.session.client;
        let mut n = 0u64;
        if depth >= MAX_PARENT_DEPTH || keys.is_empty() {
            return Ok(0);
        }
        for (child_name, hop) in ctx.scopes.children_of(&parent.name) {
            let Some(child) = ctx.tables.get(&child_name) else { continue };
            let Some(col) = child.column(&hop.column) else { continue };
            let cpk = child.pk().expect("syncable");
            let tref = TableRef::new(child, col);
            for chunk in keys.chunks(ctx.cfg.sync.batch_size.max(1)) {
                let json = ctx.upstream.fetch(&tref, chunk).await?;
                let row = c
                    .query_one(
                        "SELECT coalesce((SELECT array_agg(k) FROM jsonb_object_keys($1::text::jsonb->0) k), '{}'),
                                coalesce((SELECT array_agg(e->>$2) FROM jsonb_array_elements($1::text::jsonb) e), '{}')",
                        &[&json, &cpk.name],
                    )
                    .await
                    .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
                let (cols, child_keys): (Vec<String>, Vec<String>) = (row.get(0), row.get(1));
                if cols.is_empty() {
                    continue;
                }
                let cols = ctx.session.shared_columns(child, &cols);
                let w = write_rows(c, child, &cols, &json).await?;
                tracing::info!(table = %child.name, parent = %parent.name, rows = w, "fetched the children of rows that moved into this server's branches");
                n += w + fetch_children(ctx, child, &child_keys, depth + 1).await?;
            }
        }
        Ok(n)
    })
}

/// Removes the local copies of rows that left this server's branch scope
/// (feed `out`): only copies in scope here (a parent of another branch
/// fetched by key stays), their via-children first, and a row another local
/// row still refers to is kept (and refreshed from upstream by key) so
/// foreign keys never break. Runs in the page's transaction, under the
/// replication origin: capture drops these deletes, nothing goes upstream.
async fn remove_out_of_scope<U: Upstream>(ctx: &Ctx<'_, U>, table: &Table, keys: &[&str]) -> Result<u64> {
    let c = &ctx.session.client;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let branches: Vec<String> = ctx.scopes.branch_ids.clone().unwrap_or_default();
    let pk = table.pk().expect("syncable");
    let qpk = quote_ident(&pk.name);
    let pred = ctx.scopes.predicate(ctx.tables, &table.name, "d", "$2");
    let sql = format!(
        "SELECT d.{qpk}::text FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[]) AND {pred}",
        t = table.qualified(),
        ty = pk.type_name
    );
    let in_scope: Vec<String> = c.query(&sql, &[&keys, &branches]).await.map_err(q)?.iter().map(|r| r.get(0)).collect();
    remove_rows(ctx, table, in_scope).await
}

/// Removes the local rows `keys` of `table` that left this server's scope,
/// their via-children first; a row another local row still refers to is
/// kept and refreshed from upstream by key. In the caller's transaction,
/// under the replication origin.
async fn remove_rows<U: Upstream>(ctx: &Ctx<'_, U>, table: &Table, in_scope: Vec<String>) -> Result<u64> {
    let c = &ctx.session.client;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let pk = table.pk().expect("syncable");
    let qpk = quote_ident(&pk.name);
    if in_scope.is_empty() {
        return Ok(0);
    }
    let mut n = remove_children(ctx, table, &in_scope, 0).await?;
    // Still referred to by another local row: kept.
    let mut refs = Vec::new();
    for other in ctx.tables.values() {
        for fk in &other.foreign_keys {
            if let ([col], [pcol]) = (fk.columns.as_slice(), fk.parent_columns.as_slice())
                && fk.parent_table == table.name
                && fk.parent_schema == table.schema
                && *pcol == pk.name
            {
                refs.push(format!(
                    "NOT EXISTS (SELECT 1 FROM {o} r WHERE r.{col} = d.{qpk})",
                    o = other.qualified(),
                    col = quote_ident(col)
                ));
            }
        }
    }
    let sql = format!(
        "DELETE FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[]){and}{refs} RETURNING d.{qpk}::text",
        t = table.qualified(),
        ty = pk.type_name,
        and = if refs.is_empty() { "" } else { " AND " },
        refs = refs.join(" AND ")
    );
    let gone: HashSet<String> = c.query(&sql, &[&in_scope]).await.map_err(q)?.iter().map(|r| r.get(0)).collect();
    n += gone.len() as u64;
    let kept: Vec<String> = in_scope.into_iter().filter(|k| !gone.contains(k)).collect();
    tracing::info!(table = %table.name, removed = gone.len(), kept_as_parents = kept.len(), "rows that left this server's branches");
    if !kept.is_empty() {
        // Now a parent of another branch: brought up to date like a fetched parent.
        let tref = TableRef::new(table, pk);
        let json = ctx.upstream.fetch(&tref, &kept).await?;
        let cols: Vec<String> = c
            .query_one("SELECT coalesce((SELECT array_agg(k) FROM jsonb_object_keys($1::text::jsonb->0) k), '{}')", &[&json])
            .await
            .map_err(q)?
            .get(0);
        if !cols.is_empty() {
            let cols = ctx.session.shared_columns(table, &cols);
            write_rows(c, table, &cols, &json).await?;
        }
    }
    Ok(n)
}

/// Removes the local copies of rows this clinic itself moved out of its
/// branch scope: the notes the pusher wrote in the journal when it delivered
/// the move (`_sync_moved_away`, [`crate::scope::UpFilter::take_moved`]),
/// durable, so a restart between the delivery and this removal loses
/// nothing. The feed never returns a clinic's own writes, so no `out` comes
/// for them. In one local transaction under the replication origin (capture
/// drops the deletes): the rows are locked, capture is waited for, and only
/// a row still outside the scope here with no change left unsent in the
/// journal (queued or parked) goes (a row whose move upstream has not
/// confirmed stays; the pusher notes it again when it sends it), with its
/// via-children; a row another local row refers to stays as a parent, as
/// for `out`. The notes read are deleted after the local commit (a crash in
/// between handles them again and finds nothing to remove). Returns the rows
/// removed.
pub async fn remove_moved_away<U: Upstream>(
    cfg: &Config,
    session: &Session,
    upstream: &U,
    tables: &BTreeMap<String, Table>,
    progress: &watch::Receiver<Lsn>,
) -> Result<u64> {
    let scopes = crate::scope::resolve(cfg, tables)?;
    let Some(branches) = scopes.branch_ids.clone() else { return Ok(0) };
    let journal = session.journal();
    let notes = journal.moved_away().await?;
    if notes.is_empty() {
        return Ok(0);
    }
    let ctx = Ctx { cfg, session, upstream, tables, progress, scopes: &scopes, scope_arg: None };
    let c = &session.client;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let mut by_table: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in &notes {
        if tables.contains_key(&m.table) && scopes.of(&m.table).is_scoped() {
            by_table.entry(m.table.as_str()).or_default().push(m.row_id.as_str());
        }
    }
    if by_table.is_empty() {
        // Notes of tables no longer synced or scoped: nothing to remove.
        journal.forget_moved_away(&notes).await?;
        return Ok(0);
    }
    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(q)?;
    let result = async {
        for (t, keys) in &by_table {
            lock_rows(c, &tables[*t], keys).await?;
        }
        let flushed: postgres_types::PgLsn = c.query_one("SELECT pg_current_wal_flush_lsn()", &[]).await.map_err(q)?.get(0);
        wait_progress(&mut progress.clone(), Lsn::from(flushed), CAPTURE_WAIT).await?;
        let mut n = 0;
        for name in catalog::parents_first(tables) {
            let Some(keys) = by_table.get(name.as_str()) else { continue };
            let table = &tables[name.as_str()];
            let pk = table.pk().expect("syncable");
            let pred = scopes.predicate(tables, &name, "d", "$2");
            let sql = format!(
                "SELECT d.{qpk}::text FROM {t} d WHERE d.{qpk} = ANY($1::text[]::{ty}[]) AND NOT ({pred})",
                qpk = quote_ident(&pk.name),
                t = table.qualified(),
                ty = pk.type_name
            );
            let outside: Vec<String> = c.query(&sql, &[keys, &branches]).await.map_err(q)?.iter().map(|r| r.get(0)).collect();
            let unsent: HashSet<String> = journal.unsent_keys(&name, &outside).await?.into_iter().collect();
            let out: Vec<String> = outside.into_iter().filter(|k| !unsent.contains(k)).collect();
            let removed = remove_rows(&ctx, table, out).await?;
            if removed > 0 {
                tracing::info!(table = %name, rows = removed, "rows this server moved to other branches removed locally (and their children)");
            }
            n += removed;
        }
        Ok::<u64, SyncError>(n)
    }
    .await;
    let n = match result {
        Ok(n) => c.batch_execute("COMMIT").await.map_err(q).map(|()| n)?,
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    journal.forget_moved_away(&notes).await?;
    Ok(n)
}

/// Deletes the local via-children of rows `keys` of `parent` (theirs first).
fn remove_children<'a, U: Upstream>(
    ctx: &'a Ctx<'a, U>,
    parent: &'a Table,
    keys: &'a [String],
    depth: usize,
) -> std::pin::Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>> {
    Box::pin(async move {
        let c = &ctx.session.client;
        let mut n = 0u64;
        if depth >= MAX_PARENT_DEPTH || keys.is_empty() {
            return Ok(0);
        }
        for (child_name, hop) in ctx.scopes.children_of(&parent.name) {
            let Some(child) = ctx.tables.get(&child_name) else { continue };
            let cpk = child.pk().expect("syncable");
            let sql = format!(
                "SELECT d.{qpk}::text FROM {t} d WHERE d.{col}::text = ANY($1::text[])",
                t = child.qualified(),
                qpk = quote_ident(&cpk.name),
                col = quote_ident(&hop.column)
            );
            let child_keys: Vec<String> =
                c.query(&sql, &[&keys]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?.iter().map(|r| r.get(0)).collect();
            if child_keys.is_empty() {
                continue;
            }
            n += remove_children(ctx, child, &child_keys, depth + 1).await?;
            let sql =
                format!("DELETE FROM {t} d WHERE d.{qpk}::text = ANY($1::text[])", t = child.qualified(), qpk = quote_ident(&cpk.name));
            n += c.execute(&sql, &[&child_keys]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?;
        }
        Ok(n)
    })
}

/// The branch set in `scopes` against the one the feed was last read for
/// (`_sync_state`, [`store::branch_hold::BRANCH_SET_KEY`]): branches added
/// (or the scope lifted) restart the feed of the scoped tables, so their
/// next read is a first download of the new branches' rows (rows already
/// here are identical and not rewritten); branches dropped leave their rows
/// until `drop-branch-rows --yes` ([`drop_out_of_scope_rows`]).
async fn follow_branch_set(store: &Store<'_>, scopes: &Scopes, order: &[String]) -> Result<()> {
    let now = match &scopes.branch_ids {
        None => "*".to_string(),
        Some(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            serde_json::to_string(&ids).expect("strings serialize")
        }
    };
    let was = store.branch_set().await?;
    if was.as_deref() == Some(now.as_str()) {
        return Ok(());
    }
    if let Some(was) = &was {
        let old: Option<Vec<String>> = serde_json::from_str(was).ok();
        let added = match (&old, &scopes.branch_ids) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(old), Some(new)) => new.iter().any(|b| !old.contains(b)),
        };
        let dropped = match (&old, &scopes.branch_ids) {
            (None, Some(_)) => true,
            (_, None) => false,
            (Some(old), Some(new)) => old.iter().any(|b| !new.contains(b)),
        };
        if added {
            let scoped: Vec<String> = order.iter().filter(|t| scopes.of(t).is_scoped() || scopes.branch_ids.is_none()).cloned().collect();
            store.restart_feed(&scoped).await?;
            tracing::warn!(
                tables = scoped.len(),
                "[sync] branch_ids gained branches: their rows are downloaded from the start of the feed"
            );
        }
        if dropped {
            tracing::warn!(
                "[sync] branch_ids lost branches: their rows stay in this database until `centrovision-sync drop-branch-rows --yes` removes them"
            );
        }
    }
    store.set_note(store::branch_hold::BRANCH_SET_KEY, Some(&now)).await
}

/// What `drop-branch-rows` removed from one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Dropped {
    pub table: String,
    pub removed: u64,
    /// Rows of other branches kept because a row of this server's branches
    /// refers to them.
    pub kept_as_parents: u64,
}

/// Removes the local rows outside this server's branch scope (after
/// `[sync] branch_ids` lost a branch), children first, keeping a row another
/// local row still refers to, in one local transaction under the
/// replication origin (capture drops the deletes: nothing is deleted
/// upstream). With `apply` false, only counts. Refuses, changing nothing,
/// while any of those rows has a journaled change not synced yet. With
/// `apply`, first captures the slot into the journal
/// ([`crate::service::capture_to_now`], holding the instance lock until it
/// returns), so a change made while the service was stopped counts too;
/// refused while the service runs.
pub async fn drop_out_of_scope_rows(cfg: &Config, apply: bool) -> Result<Vec<Dropped>> {
    let lock = match apply {
        true => Some(crate::service::capture_to_now(cfg).await.map_err(|e| match e.kind {
            ErrorKind::SecondInstance => {
                e.with_hint("stop the service first: drop-branch-rows --yes captures every local change before it judges the rows unsent")
            }
            _ => e,
        })?),
        false => None,
    };
    let session = Session::open(cfg).await?;
    let c = &session.client;
    let tables = &catalog::load(c, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    let scopes = crate::scope::resolve(cfg, tables)?;
    let Some(branches) = scopes.branch_ids.clone() else {
        return Err(SyncError::new(ErrorKind::Config, "[sync] branch_ids is not set: every branch's rows belong here, nothing to drop"));
    };
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let mut order = catalog::parents_first(tables);
    order.reverse();
    c.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.map_err(q)?;
    let result = async {
        let mut out = Vec::new();
        for name in &order {
            if !scopes.of(name).is_scoped() {
                continue;
            }
            let table = &tables[name.as_str()];
            let pk = table.pk().expect("syncable");
            let qpk = quote_ident(&pk.name);
            let pred = scopes.predicate(tables, name, "d", "$1");
            let sql = format!("SELECT d.{qpk}::text FROM {t} d WHERE NOT ({pred})", t = table.qualified());
            let keys: Vec<String> = c.query(&sql, &[&branches]).await.map_err(q)?.iter().map(|r| r.get(0)).collect();
            if keys.is_empty() {
                continue;
            }
            let unsent = session.journal().unsent_keys(name, &keys).await?;
            if !unsent.is_empty() {
                return Err(SyncError::new(
                    ErrorKind::Config,
                    format!(
                        "{} rows of {name} outside [sync] branch_ids have local changes that are not synced yet: nothing was removed",
                        unsent.len()
                    ),
                )
                .with_hint("let the service send them (or resolve the parked ones `status` lists), then run drop-branch-rows again"));
            }
            let mut refs = Vec::new();
            for other in tables.values() {
                for fk in &other.foreign_keys {
                    if let ([col], [pcol]) = (fk.columns.as_slice(), fk.parent_columns.as_slice())
                        && fk.parent_table == table.name
                        && fk.parent_schema == table.schema
                        && *pcol == pk.name
                    {
                        refs.push(format!(
                            " AND NOT EXISTS (SELECT 1 FROM {o} r WHERE r.{col} = d.{qpk})",
                            o = other.qualified(),
                            col = quote_ident(col)
                        ));
                    }
                }
            }
            let sql = if apply {
                format!(
                    "WITH x AS (DELETE FROM {t} d WHERE d.{qpk}::text = ANY($1){refs} RETURNING 1) SELECT count(*) FROM x",
                    t = table.qualified(),
                    refs = refs.concat()
                )
            } else {
                // A preview: rows whose children would go first are counted as kept.
                format!("SELECT count(*) FROM {t} d WHERE d.{qpk}::text = ANY($1){refs}", t = table.qualified(), refs = refs.concat())
            };
            let removed = c.query_one(&sql, &[&keys]).await.map_err(q)?.get::<_, i64>(0) as u64;
            out.push(Dropped { table: name.clone(), removed, kept_as_parents: keys.len() as u64 - removed });
        }
        Ok::<_, SyncError>(out)
    }
    .await;
    let end = if apply && result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    c.batch_execute(end).await.map_err(q)?;
    // Let go now, so a command that follows finds the origin and the
    // instance lock free at once.
    session.close().await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

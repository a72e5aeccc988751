//! Recovery for failures no retry fixes: `replay` (re-send journaled
//! changes from a saved LSN after an upstream restore), `verify [--repair]`
//! (prove both sides equal, or put them back), and `resync` (recreate a lost
//! slot and reconcile).
//!
//! All of them go through the same apply and conflict rule as normal sync
//! (sql/upstream/001_apply.sql), so they are idempotent and never overwrite
//! a version the rule says is newer. This module
//! does the work and returns what happened; the CLI (`commands`) prints it.

use crate::config::{Config, connect_journal, connect_local};
use crate::down;
use crate::error::{ErrorKind, JOURNAL, LOCAL, Result, SyncError};
use crate::journal::{self, Source};
use crate::lsn::Lsn;
use crate::push;
use crate::service::{acquire_instance_lock, check_contract, compare_tables, local_tables, once_with};
use crate::store::{JournalStore, Store};
use crate::upstream::{self, Upstream};
use crate::verify::{self, TableDiff};

/// Which journaled changes to replay.
#[derive(Debug, Clone)]
pub struct ReplayRange {
    /// First commit LSN.
    pub from: Lsn,
    /// Last commit LSN (inclusive), or everything after `from`.
    pub to: Option<Lsn>,
    /// Only these tables (all when empty).
    pub tables: Vec<String>,
}

/// How many journaled changes of one table and operation a replay sends.
#[derive(Debug, Clone)]
pub struct ReplayGroup {
    pub table: String,
    pub operation: String,
    pub rows: i64,
}

/// What a replay would send.
#[derive(Debug, Clone, Default)]
pub struct ReplayPlan {
    pub groups: Vec<ReplayGroup>,
    pub total: i64,
    /// The first and last commit LSN in the range.
    pub first: Option<String>,
    pub last: Option<String>,
}

/// What upstream did with a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replayed {
    pub applied: usize,
    /// Newer or equal upstream: kept there.
    pub kept: usize,
    pub rejected: usize,
}

/// Counts what a replay of `range` would send; refuses a range the
/// journal no longer holds.
pub async fn plan_replay(cfg: &Config, range: &ReplayRange) -> Result<ReplayPlan> {
    let journal = connect_journal(cfg).await?;
    let store = JournalStore::new(&journal, JOURNAL);
    let (oldest, pruned) = store.replay_bounds(&cfg.sync.slot_name).await?;
    let from = range.from;
    if let Some(p) = pruned.filter(|p| from <= *p) {
        return Err(SyncError::new(ErrorKind::Refused, format!(
            "the journal no longer holds changes at {from}: history up to {p} was pruned after [sync] journal_retention_hours; the oldest replayable LSN is {}",
            oldest.map_or("none (journal empty)".to_string(), |l| l.to_string())
        ))
        .with_hint("replay from the oldest replayable LSN, then run `centrovision-sync verify --repair` to reconcile what is older"));
    }
    let stats = store.replay_summary(from, range.to, &range.tables).await?;
    Ok(ReplayPlan {
        total: stats.iter().map(|r| r.rows).sum(),
        first: stats.iter().filter_map(|r| r.min_lsn.clone()).min_by_key(|s| s.parse::<Lsn>().ok()),
        last: stats.iter().filter_map(|r| r.max_lsn.clone()).max_by_key(|s| s.parse::<Lsn>().ok()),
        groups: stats.into_iter().map(|r| ReplayGroup { table: r.table, operation: r.operation, rows: r.rows }).collect(),
    })
}

/// Re-sends the journaled changes of `range` upstream, in journal order.
/// Rejected changes are logged and counted, not parked.
pub async fn replay(cfg: &Config, range: &ReplayRange) -> Result<Replayed> {
    let journal = connect_journal(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let source = Source::Range { from: range.from, to: range.to, tables: range.tables.clone() };
    let mut done = Replayed::default();
    let mut after = 0i64;
    let epochs = JournalStore::new(&journal, JOURNAL).epochs().await?;
    loop {
        let rows = journal::next_batch(&journal, &source, cfg.sync.batch_size as i64, after).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        // No base versions: after an upstream restore the ids they name may
        // mean other versions, and a replayed change that replaces another
        // writer's version is better logged as a conflict than not.
        let built = push::build(&rows, cfg.upstream_schema(), &epochs, &push::Bases::new())?;
        let o = up.apply(&built.json).await?;
        done.applied += o.applied.len();
        done.kept += o.kept.len();
        done.rejected += o.rejected.len();
        for r in &o.rejected {
            tracing::warn!(table = %built.tables[r.index as usize], code = r.code.as_deref().unwrap_or(""), error = %r.message, "replay: change rejected upstream");
        }
    }
    Ok(done)
}

/// What `verify` found, and with `--repair` did.
#[derive(Debug)]
pub struct Verification {
    /// The first comparison.
    pub diffs: Vec<TableDiff>,
    /// What each repaired table needed.
    pub repaired: Vec<(String, verify::Repaired)>,
    /// The comparison after the repair (empty when nothing was repaired).
    pub after_repair: Vec<TableDiff>,
    /// Both sides are equal at the end.
    pub equal: bool,
}

impl Verification {
    /// Tables that still differ after a repair.
    pub fn still_differ(&self) -> impl Iterator<Item = &TableDiff> {
        self.after_repair.iter().filter(|d| !d.is_equal())
    }
}

/// Compares (and with `repair`, reconciles) the tables `only` (all when
/// empty).
pub async fn verify(cfg: &Config, only: Vec<String>, repair: bool) -> Result<Verification> {
    verify_with(cfg, only, repair, false).await
}

async fn verify_with(cfg: &Config, only: Vec<String>, repair: bool, after_lost_slot: bool) -> Result<Verification> {
    if repair {
        // Repair decides deletes by the journal's tombstones, so the journal
        // must hold every local change first: one full sync pass (capture to
        // now, push, poll) — which also removes most drift by itself. After a
        // lost slot, no poll: it would bring back rows deleted locally while
        // the slot was gone before the repair can recognize them.
        once_with(cfg, !after_lost_slot).await?;
    }
    let tables = local_tables(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let local = connect_local(cfg).await?;
    let store = Store::new(&local, LOCAL);
    // The repair's place in this clinic's commit order: taken before the
    // rows are compared and read (see verify::Position).
    let started_at = store.settled_position().await?.to_string();
    let names: Vec<String> = if only.is_empty() { crate::catalog::parents_first(&tables) } else { only };
    let diffs = compare_tables(cfg, &local, &up, &tables, &names).await?;
    let equal = diffs.iter().all(TableDiff::is_equal);
    // Scoped tables whose own rows missing here only the scoped feed can bring.
    let restart: Vec<String> =
        if after_lost_slot { Vec::new() } else { diffs.iter().filter(|d| d.upstream_not_here > 0).map(|d| d.table.clone()).collect() };
    if !repair || (equal && restart.is_empty()) {
        return Ok(Verification { diffs, repaired: Vec::new(), after_repair: Vec::new(), equal });
    }
    let session = down::Session::open(cfg).await.map_err(|e| {
        if e.kind == ErrorKind::InUse {
            e.with_hint("the running service holds the replication origin: stop it (systemctl stop centrovision-sync) for --repair, then start it again")
        } else {
            e
        }
    })?;
    let epoch = session.journal().capture_identity(&cfg.sync.slot_name).await?.map_or(1, |(_, e)| e);
    let position = verify::Position { epoch, lsn: started_at };
    let repairer =
        verify::Repairer { cfg, local: &local, session: &session, up: &up, tables: &tables, position: &position, after_lost_slot };
    let mut repaired = Vec::new();
    for d in diffs.iter().filter(|d| !d.is_equal()) {
        let r = repairer.repair(&tables[&d.table], d).await?;
        repaired.push((d.table.clone(), r));
    }
    // At a scoped server rows of its branches missing here are not told
    // apart from other branches' rows by the comparison: the scoped feed
    // reads those tables from the start again and brings them (rows already
    // here are not rewritten). Not after a lost slot: it would bring back
    // rows deleted here while the slot was gone.
    if !restart.is_empty() {
        store.restart_feed(&restart).await?;
    }
    // The winners of versions that lost upstream come back through the feed.
    let (_tx, no_wait) = tokio::sync::watch::channel(Lsn::from_u64(u64::MAX));
    down::cycle(cfg, &session, &up, &tables, &no_wait).await?;
    // Prove it: compare again.
    let after_repair = compare_tables(cfg, &local, &up, &tables, &names).await?;
    let equal = after_repair.iter().all(TableDiff::is_equal);
    Ok(Verification { diffs, repaired, after_repair, equal })
}

/// A step of [`resync`], for the caller to report as it happens.
#[derive(Debug, Clone, Copy)]
pub enum ResyncStep<'a> {
    /// The slot is healthy (with this `wal_status`) and is recreated anyway.
    RecreatingHealthySlot { wal_status: Option<&'a str> },
    /// The slot was recreated; the journal is pushed, then both sides are
    /// reconciled.
    Recreated,
}

/// Recreates a lost or missing slot, delivers what was journaled before,
/// and reconciles both sides (`verify --repair`, without a poll first).
pub async fn resync(cfg: &Config, mut step: impl FnMut(ResyncStep<'_>)) -> Result<Verification> {
    let lock = acquire_instance_lock(cfg).await?;
    let local = connect_local(cfg).await?;
    let q = |e| SyncError::from_pg(LOCAL, &e).about_slot();
    let slot: Option<Option<String>> = local
        .query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.sync.slot_name])
        .await
        .map_err(q)?
        .map(|r| r.get(0));
    match &slot {
        Some(s) if s.as_deref() != Some("lost") => step(ResyncStep::RecreatingHealthySlot { wal_status: s.as_deref() }),
        _ => {}
    }
    if slot.is_some() {
        local.execute("SELECT pg_drop_replication_slot($1)", &[&cfg.sync.slot_name]).await.map_err(q)?;
    }
    local.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&cfg.sync.slot_name]).await.map_err(q)?;
    tracing::warn!(slot = %cfg.sync.slot_name, "replication slot recreated; reconciling both sides");
    step(ResyncStep::Recreated);
    // What was journaled before the slot was lost is valid: deliver it.
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let journal = connect_journal(cfg).await?;
    let mut sizer = push::Sizer::new(cfg.sync.batch_size);
    let scope = crate::scope::UpFilter::load(cfg, &local).await?;
    loop {
        let pusher = push::Pusher {
            local: &local,
            journal: &journal,
            upstream: &up,
            schema: cfg.upstream_schema(),
            max_attempts: cfg.sync.retry_max_attempts,
            scope: scope.as_ref(),
        };
        match push::push_batch(&pusher, &mut sizer).await {
            Ok(r) if r.rows == 0 => break,
            Ok(_) => {}
            Err(f) => return Err(f.error),
        }
    }
    // Released before verify --repair takes it again.
    lock.release().await;
    verify_with(cfg, Vec::new(), true, true).await
}

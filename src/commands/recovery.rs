//! Recovery tools for failures no retry fixes: `replay` (re-send journaled
//! changes from a saved LSN after an upstream restore), `verify [--repair]`
//! (prove both sides equal, or put them back), and `resync` (recreate a lost
//! slot and reconcile).
//!
//! All of them go through the same last-write-wins apply as normal sync, so
//! they are idempotent and never overwrite newer upstream data.


use serde::Serialize;

use crate::service::{acquire_instance_lock, check_contract, compare_tables, local_tables};
use crate::config::Config;
use crate::down;
use crate::error::{ErrorKind, Result, SyncError};
use crate::journal::{self, Source};
use crate::lsn::Lsn;
use crate::push;
use crate::replication::connect_local;
use crate::upstream::{self, Upstream};
use crate::verify::{self, TableDiff};

const LOCAL: crate::error::At = crate::error::At::local("local database");

/// Checks `--table` names against `[sync] tables` (exit 2 on a stranger).
pub(crate) fn check_tables(cfg: &Config, tables: &[String]) -> std::result::Result<(), String> {
    for t in tables {
        if !cfg.sync.tables.contains(t) {
            return Err(format!("unknown table {t:?}: it is not in [sync] tables ({})", cfg.sync.tables.join(", ")));
        }
    }
    Ok(())
}

pub async fn replay(cfg: &Config, from: Lsn, to: Option<Lsn>, tables: Vec<String>, dry_run: bool) -> Result<()> {
    let local = connect_local(cfg).await?;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let bounds = local
        .query_one(
            "SELECT (SELECT min(commit_lsn) FROM _sync_pending),
                    (SELECT pruned_through_lsn FROM _sync_capture WHERE slot_name = $1)",
            &[&cfg.sync.slot_name],
        )
        .await
        .map_err(q)?;
    let oldest: Option<Lsn> = bounds.get::<_, Option<postgres_types::PgLsn>>(0).map(Lsn::from);
    let pruned: Option<Lsn> = bounds.get::<_, Option<postgres_types::PgLsn>>(1).map(Lsn::from);
    if let Some(p) = pruned.filter(|p| from <= *p) {
        return Err(SyncError::new(ErrorKind::Refused, format!(
            "the journal no longer holds changes at {from}: history up to {p} was pruned after [sync] journal_retention_hours; the oldest replayable LSN is {}",
            oldest.map_or("none (journal empty)".to_string(), |l| l.to_string())
        ))
        .with_hint("replay from the oldest replayable LSN, then run `centrovision-sync verify --repair` to reconcile what is older"));
    }
    let source = Source::Range { from, to, tables: tables.clone() };
    let stats = local
        .query(
            "SELECT table_name::text, operation::text, count(*), min(commit_lsn)::text, max(commit_lsn)::text
             FROM _sync_pending
             WHERE commit_lsn >= $1 AND ($2::pg_lsn IS NULL OR commit_lsn <= $2)
               AND (cardinality($3::text[]) = 0 OR table_name = ANY($3))
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[&postgres_types::PgLsn::from(from), &to.map(postgres_types::PgLsn::from), &tables],
        )
        .await
        .map_err(q)?;
    let total: i64 = stats.iter().map(|r| r.get::<_, i64>(2)).sum();
    let lo = stats.iter().filter_map(|r| r.get::<_, Option<String>>(3)).min_by_key(|s| s.parse::<Lsn>().ok());
    let hi = stats.iter().filter_map(|r| r.get::<_, Option<String>>(4)).max_by_key(|s| s.parse::<Lsn>().ok());
    println!(
        "{} {total} journaled changes, LSN {} .. {}",
        if dry_run { "would replay" } else { "replaying" },
        lo.as_deref().unwrap_or("-"),
        hi.as_deref().unwrap_or("-")
    );
    for r in &stats {
        println!("  {:<24} {:<9} {:>8}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2));
    }
    if dry_run || total == 0 {
        return Ok(());
    }
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let (mut applied, mut kept, mut rejected, mut after) = (0usize, 0usize, 0usize, 0i64);
    loop {
        let rows = journal::next_batch(&local, &source, cfg.sync.batch_size as i64, after).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let built = push::build(&rows, cfg.upstream_schema())?;
        let o = up.apply(&built.json).await?;
        applied += o.applied.len();
        kept += o.kept.len();
        rejected += o.rejected.len();
        for r in &o.rejected {
            tracing::warn!(table = %built.tables[r.i as usize], code = r.code.as_deref().unwrap_or(""), error = %r.message, "replay: change rejected upstream");
        }
    }
    println!("replayed: {applied} applied, {kept} kept upstream (newer or equal there), {rejected} rejected");
    if rejected > 0 {
        return Err(SyncError::new(ErrorKind::RejectedRow, format!("{rejected} changes were rejected upstream; see the log")));
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifyReport<'a> {
    equal: bool,
    tables: &'a [TableDiff],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repaired: Vec<(String, verify::Repaired)>,
}

/// Compares (and with `repair`, reconciles) the tables. Returns whether
/// everything is equal at the end.
pub async fn verify(cfg: &Config, only: Vec<String>, json: bool, repair: bool) -> Result<bool> {
    run_verify(cfg, only, json, repair, false).await
}

async fn run_verify(cfg: &Config, only: Vec<String>, json: bool, repair: bool, after_lost_slot: bool) -> Result<bool> {
    if repair {
        // Repair decides deletes by the journal's tombstones, so the journal
        // must hold every local change first: one full sync pass (capture to
        // now, push, poll) — which also removes most drift by itself. After a
        // lost slot, no poll: it would bring back rows deleted locally while
        // the slot was gone before the repair can recognize them.
        crate::service::once_with(cfg, !after_lost_slot).await?;
    }
    let tables = local_tables(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let local = connect_local(cfg).await?;
    let names: Vec<String> = if only.is_empty() { crate::catalog::parents_first(&tables) } else { only };
    let diffs = compare_tables(cfg, &local, &up, &tables, &names).await?;
    let equal = diffs.iter().all(TableDiff::is_equal);
    if !repair || equal {
        print_report(&diffs, json, Vec::new(), equal);
        return Ok(equal);
    }
    let session = down::Session::open(cfg).await.map_err(|e| {
        if e.kind == ErrorKind::InUse {
            e.with_hint("the running service holds the replication origin: stop it (systemctl stop centrovision-sync) for --repair, then start it again")
        } else {
            e
        }
    })?;
    let mut repaired = Vec::new();
    for d in diffs.iter().filter(|d| !d.is_equal()) {
        let r = verify::repair(cfg, &local, &session, &up, &tables, &tables[&d.table], d, after_lost_slot).await?;
        repaired.push((d.table.clone(), r));
    }
    // Prove it: compare again.
    let again = compare_tables(cfg, &local, &up, &tables, &names).await?;
    let equal_now = again.iter().all(TableDiff::is_equal);
    print_report(&diffs, json, repaired, equal_now);
    if !equal_now {
        for d in again.iter().filter(|d| !d.is_equal()) {
            eprintln!("still differs after repair: {} ({} rows)", d.table, d.drift());
        }
    }
    Ok(equal_now)
}

fn print_report(diffs: &[TableDiff], json: bool, repaired: Vec<(String, verify::Repaired)>, equal_at_end: bool) {
    if json {
        let r = VerifyReport { equal: equal_at_end, tables: diffs, repaired };
        println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
        return;
    }
    println!("{:<24} {:>10} {:>10} {:>10} {:>12} {:>8}", "table", "local", "upstream", "only local", "only upstr.", "differ");
    for d in diffs {
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>12} {:>8}",
            d.table,
            d.local_rows,
            d.upstream_rows,
            d.only_local.len(),
            d.only_upstream.len(),
            d.differ.len()
        );
        let show = |label: &str, ids: &[String]| {
            if !ids.is_empty() {
                let head: Vec<&str> = ids.iter().take(verify::MAX_IDS).map(String::as_str).collect();
                let more = if ids.len() > verify::MAX_IDS { format!(" (+{} more)", ids.len() - verify::MAX_IDS) } else { String::new() };
                println!("    {label}: {}{more}", head.join(", "));
            }
        };
        show("only local", &d.only_local);
        show("only upstream", &d.only_upstream);
        show("differ", &d.differ);
    }
    for (t, r) in &repaired {
        println!(
            "repaired {t}: {} pushed, {} deleted upstream, {} applied locally, {} kept upstream, {} rejected",
            r.pushed,
            r.deleted_upstream,
            r.pulled,
            r.kept_upstream,
            r.rejected.len()
        );
    }
    println!("{}", if equal_at_end { "equal: yes" } else { "equal: NO" });
}

/// Recreates a lost or missing slot and reconciles both sides.
pub async fn resync(cfg: &Config) -> Result<bool> {
    let _lock = acquire_instance_lock(cfg).await?;
    let local = connect_local(cfg).await?;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let slot: Option<Option<String>> = local
        .query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.sync.slot_name])
        .await
        .map_err(q)?
        .map(|r| r.get(0));
    match &slot {
        Some(s) if s.as_deref() != Some("lost") => {
            println!("slot {} is healthy ({}); recreating it anyway and reconciling", cfg.sync.slot_name, s.as_deref().unwrap_or("-"));
        }
        _ => {}
    }
    if slot.is_some() {
        local.execute("SELECT pg_drop_replication_slot($1)", &[&cfg.sync.slot_name]).await.map_err(q)?;
    }
    local
        .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&cfg.sync.slot_name])
        .await
        .map_err(q)?;
    tracing::warn!(slot = %cfg.sync.slot_name, "replication slot recreated; reconciling both sides");
    println!("slot {} recreated; pushing the journal, then reconciling with verify --repair", cfg.sync.slot_name);
    // What was journaled before the slot was lost is valid: deliver it.
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    loop {
        match push::push_batch(&local, &up, cfg.sync.batch_size, cfg.upstream_schema(), cfg.sync.retry_max_attempts).await {
            Ok(r) if r.rows == 0 => break,
            Ok(_) => {}
            Err(f) => return Err(f.error),
        }
    }
    drop(_lock);
    run_verify(cfg, Vec::new(), false, true, true).await
}

/// Parses an LSN argument (for clap).
pub(crate) fn parse_lsn(s: &str) -> std::result::Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}

//! `replay`, `verify [--repair]` and `resync`: the command-line side of
//! [`crate::recovery`] — checks the arguments, prints plans and reports,
//! and turns the outcome into the exit code.

use serde::Serialize;

use crate::config::Config;
use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;
use crate::recovery::{self, ReplayRange, ResyncStep, Verification};
use crate::verify::{self, TableDiff};

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
    let range = ReplayRange { from, to, tables };
    let plan = recovery::plan_replay(cfg, &range).await?;
    println!(
        "{} {} journaled changes, LSN {} .. {}",
        if dry_run { "would replay" } else { "replaying" },
        plan.total,
        plan.first.as_deref().unwrap_or("-"),
        plan.last.as_deref().unwrap_or("-")
    );
    for g in &plan.groups {
        println!("  {:<24} {:<9} {:>8}", g.table, g.operation, g.rows);
    }
    if dry_run || plan.total == 0 {
        return Ok(());
    }
    let done = recovery::replay(cfg, &range).await?;
    println!("replayed: {} applied, {} kept upstream (newer or equal there), {} rejected", done.applied, done.kept, done.rejected);
    if done.rejected > 0 {
        return Err(SyncError::new(ErrorKind::RejectedRow, format!("{} changes were rejected upstream; see the log", done.rejected)));
    }
    Ok(())
}

/// Compares (and with `repair`, reconciles) the tables. Returns whether
/// everything is equal at the end.
pub async fn verify(cfg: &Config, only: Vec<String>, json: bool, repair: bool) -> Result<bool> {
    let v = recovery::verify(cfg, only, repair).await?;
    report(v, json)
}

/// `verify --files`: the study-files mirror against the buckets (exit 0
/// equal, 1 different).
pub async fn verify_files(cfg: &Config, json: bool) -> Result<bool> {
    let (Some(storage), Some(client)) = (&cfg.storage, crate::storage::StorageClient::from_config(cfg)?) else {
        return Err(SyncError::new(ErrorKind::Config, "verify --files needs a [storage] section"));
    };
    let d = crate::storage::verify::compare(&client, storage).await?;
    if json {
        println!("{}", serde_json::json!({ "equal": d.equal(), "files": d }));
    } else {
        println!("study files: {} compared", d.compared);
        for (what, list) in [("only upstream", &d.only_upstream), ("only in the mirror", &d.only_local), ("different", &d.different)] {
            for p in list {
                println!("  {what}: {p}");
            }
        }
        println!("{}", if d.equal() { "mirror equals the buckets" } else { "mirror differs from the buckets" });
    }
    Ok(d.equal())
}

/// Recreates a lost or missing slot and reconciles both sides.
pub async fn resync(cfg: &Config) -> Result<bool> {
    let slot = &cfg.sync.slot_name;
    let v = recovery::resync(cfg, |step| match step {
        ResyncStep::RecreatingHealthySlot { wal_status } => {
            println!("slot {slot} is healthy ({}); recreating it anyway and reconciling", wal_status.unwrap_or("-"));
        }
        ResyncStep::Recreated => println!("slot {slot} recreated; pushing the journal, then reconciling with verify --repair"),
    })
    .await?;
    report(v, false)
}

#[derive(Serialize)]
struct VerifyReport<'a> {
    equal: bool,
    tables: &'a [TableDiff],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    repaired: &'a [(String, verify::Repaired)],
}

fn report(v: Verification, json: bool) -> Result<bool> {
    print_report(&v.diffs, json, &v.repaired, v.equal);
    for d in v.still_differ() {
        eprintln!("still differs after repair: {} ({} rows)", d.table, d.drift());
    }
    Ok(v.equal)
}

fn print_report(diffs: &[TableDiff], json: bool, repaired: &[(String, verify::Repaired)], equal_at_end: bool) {
    if json {
        let r = VerifyReport { equal: equal_at_end, tables: diffs, repaired };
        println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
        return;
    }
    print!("{}", report_text(diffs, repaired, equal_at_end));
}

/// The text form of a verify report: one line per table, the ids that
/// differ, what the branch scope left out of the comparison, the repairs.
fn report_text(diffs: &[TableDiff], repaired: &[(String, verify::Repaired)], equal_at_end: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:>10} {:>10} {:>10} {:>12} {:>8}", "table", "local", "upstream", "only local", "only upstr.", "differ");
    for d in diffs {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>12} {:>8}",
            d.table,
            d.local_rows,
            d.upstream_rows,
            d.only_local.len(),
            d.only_upstream.len(),
            d.differ.len()
        );
        let mut show = |label: &str, ids: &[String]| {
            if !ids.is_empty() {
                let head: Vec<&str> = ids.iter().take(verify::MAX_IDS).map(String::as_str).collect();
                let more = if ids.len() > verify::MAX_IDS { format!(" (+{} more)", ids.len() - verify::MAX_IDS) } else { String::new() };
                let _ = writeln!(out, "    {label}: {}{more}", head.join(", "));
            }
        };
        show("only local", &d.only_local);
        show("only upstream", &d.only_upstream);
        show("differ", &d.differ);
        // At a scoped server ([`verify::limit_to_scope`]): left out, not differences.
        if d.upstream_not_here > 0 {
            let _ = writeln!(
                out,
                "    not compared (branch scope): {} upstream rows not here (other branches' rows; this server's own come back through its feed)",
                d.upstream_not_here
            );
        }
        if d.local_elsewhere > 0 {
            let _ = writeln!(
                out,
                "    not compared (branch scope): {} local rows of other branches (parents of this server's rows, changes held back), never sent",
                d.local_elsewhere
            );
        }
    }
    for (t, r) in repaired {
        let _ = writeln!(
            out,
            "repaired {t}: {} pushed, {} deleted upstream, {} applied locally, {} kept upstream, {} rejected",
            r.pushed,
            r.deleted_upstream,
            r.pulled,
            r.kept_upstream,
            r.rejected.len()
        );
    }
    let _ = writeln!(out, "{}", if equal_at_end { "equal: yes" } else { "equal: NO" });
    out
}

/// Parses an LSN argument (for clap).
pub(crate) fn parse_lsn(s: &str) -> std::result::Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_report_shows_what_the_branch_scope_left_out_and_only_when_it_left_something_out() {
        let mut scoped = TableDiff::default();
        (scoped.table, scoped.local_rows, scoped.upstream_rows) = ("invoices".into(), 7, 20);
        (scoped.upstream_not_here, scoped.local_elsewhere) = (14, 1);
        let mut shared = TableDiff::default();
        (shared.table, shared.local_rows, shared.upstream_rows) = ("services".into(), 3, 3);
        let text = report_text(&[scoped, shared], &[], true);
        assert!(text.contains("not compared (branch scope): 14 upstream rows not here"), "{text}");
        assert!(text.contains("not compared (branch scope): 1 local rows of other branches"), "{text}");
        assert_eq!(text.matches("not compared").count(), 2, "a table with nothing left out prints no scope line:\n{text}");
        assert!(text.ends_with("equal: yes\n"), "{text}");
    }
}

//! The audit task: with `[audit] daily_at = "hh:mm"`, compares both sides
//! every day at that local time (the same comparison as `verify`) and
//! raises the `drift` alert when rows differ, resolving it when they no
//! longer do. It never repairs: that is `verify --repair`, run by a person.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::readiness::local_tables;
use super::runtime::Runtime;
use crate::catalog::{self, Table};
use crate::config::{Config, connect_local};
use crate::error::Result;
use crate::upstream;
use crate::verify::{self, TableDiff};

pub(crate) async fn task(rt: &Runtime, up: &upstream::Client, mut stop: watch::Receiver<bool>) {
    let Some((h, m)) = rt.cfg.audit.daily_at else { return };
    loop {
        let wait = until_next_local(h, m);
        tracing::info!(in_minutes = wait.as_secs() / 60, "next scheduled audit");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        match audit(&rt.cfg, up).await {
            Ok(drift) if drift.is_empty() => {
                tracing::info!("scheduled audit: both sides are equal");
                rt.alerter.resolve("drift").await;
            }
            Ok(drift) => {
                let total: usize = drift.iter().map(|(_, n)| n).sum();
                rt.alerter
                    .raise(
                        "drift",
                        &format!("scheduled audit found {total} rows that differ; run `centrovision-sync verify` (and --repair)"),
                        serde_json::json!({ "tables": drift.iter().map(|(t, n)| serde_json::json!({"table": t, "rows": n})).collect::<Vec<_>>() }),
                    )
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "scheduled audit failed"),
        }
    }
}

/// Compares every table; returns (table, differences) for those that
/// drifted.
pub(crate) async fn audit(cfg: &Config, up: &upstream::Client) -> Result<Vec<(String, usize)>> {
    let tables = local_tables(cfg).await?;
    let local = connect_local(cfg).await?;
    let names = catalog::parents_first(&tables);
    let diffs = compare_tables(cfg, &local, up, &tables, &names).await?;
    Ok(diffs.iter().filter(|d| !d.is_equal()).map(|d| (d.table.clone(), d.drift())).collect())
}

/// Compares the named tables, in order.
pub async fn compare_tables(
    cfg: &Config,
    local: &Client,
    up: &upstream::Client,
    tables: &BTreeMap<String, Table>,
    names: &[String],
) -> Result<Vec<TableDiff>> {
    let mut out = Vec::new();
    // At a scoped server, only its branches' rows are compared (crate::scope).
    let scopes = crate::scope::resolve(cfg, tables)?;
    for n in names {
        let mut d = verify::compare(cfg, local, up, &tables[n]).await?;
        verify::limit_to_scope(local, &scopes, tables, &mut d).await?;
        out.push(d);
    }
    Ok(out)
}

/// Time until the next local `hh:mm`.
fn until_next_local(h: u32, m: u32) -> Duration {
    use chrono::{Local, TimeZone};
    let now = Local::now();
    let today = now.date_naive().and_hms_opt(h, m, 0).expect("validated time");
    let mut next = Local.from_local_datetime(&today).earliest().unwrap_or(now);
    if next <= now {
        let tomorrow = today + chrono::Duration::days(1);
        next = Local.from_local_datetime(&tomorrow).earliest().unwrap_or(now + chrono::Duration::days(1));
    }
    (next - now).to_std().unwrap_or(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_audit_is_within_a_day() {
        for (h, m) in [(0, 0), (1, 0), (12, 30), (23, 59)] {
            let d = until_next_local(h, m);
            assert!(d > Duration::ZERO && d <= Duration::from_secs(24 * 3600 + 3600), "{h}:{m} -> {d:?}");
        }
    }
}

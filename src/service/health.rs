//! The health task: the service's periodic self-check, every
//! `health_check_seconds`: upstream reachability (one log line per outage
//! edge), the local database, alert thresholds (journal backlog, oldest
//! unsynced change, WAL retained by the slot, slot lost or missing — with
//! the recovery steps), `_sync_state` for `status`, the hourly backlog
//! sample for the status page, and pruning of `_sync_log`, of the hourly
//! history and of synced journal rows past their retention.
//!
//! A passing check is what brings a link back online, and with it the
//! tasks that wait for it (push and down).

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::runtime::Runtime;
use crate::config::LocalDbs;
use crate::error::{ErrorKind, LOCAL};
use crate::status::{self, Status};
use crate::store::{JournalStore, Store};
use crate::upstream::{self, Upstream};

const PRUNE_BATCH: u64 = 5_000;

pub(crate) async fn task(rt: &Runtime, up: &upstream::Client, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(rt.cfg.sync.health_check_seconds);
    let mut local: Option<LocalDbs> = None;
    loop {
        match up.health().await {
            Ok(()) => {
                rt.upstream_link.report_ok();
                rt.alerter.resolve("upstream_rejected").await;
            }
            Err(e) => {
                rt.upstream_link.report_down(&e);
                if !e.is_transient() {
                    rt.alerter
                        .raise("upstream_rejected", &format!("upstream refuses the service: {e}"), json!({ "error": e.to_string() }))
                        .await;
                }
            }
        }
        if local.as_ref().is_none_or(|c| c.is_closed()) {
            match LocalDbs::connect(&rt.cfg).await {
                Ok(c) => local = Some(c),
                Err(e) => {
                    rt.local_link.report_down(&e);
                }
            }
        }
        if let Some(dbs) = &local {
            match status::gather(&rt.cfg, dbs).await {
                Ok(st) => {
                    rt.local_link.report_ok();
                    thresholds(rt, &st).await;
                    persist(rt, &dbs.local).await;
                    let _ = Store::new(&dbs.local, LOCAL).record_backlog(st.backlog, st.parked).await;
                    prune(rt, dbs).await;
                }
                Err(e) => {
                    if e.kind == ErrorKind::LocalUnreachable {
                        rt.local_link.report_down(&e);
                        local = None;
                    } else {
                        tracing::warn!(error = %e, "health check cannot read the sync state");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}

async fn thresholds(rt: &Runtime, st: &Status) {
    let a = &rt.cfg.alerts;
    let al = &rt.alerter;
    if st.backlog > a.max_backlog_rows {
        al.raise(
            "backlog",
            &format!("{} changes wait to be sent upstream (limit {})", st.backlog, a.max_backlog_rows),
            json!({ "rows": st.backlog, "limit": a.max_backlog_rows }),
        )
        .await;
    } else {
        al.resolve("backlog").await;
    }
    let age_limit = (a.max_pending_age_minutes * 60) as f64;
    match st.oldest_pending_seconds {
        Some(age) if age > age_limit => {
            al.raise(
                "pending_age",
                &format!(
                    "the oldest unsent change is {} old (limit {} min)",
                    crate::connectivity::human(Duration::from_secs_f64(age)),
                    a.max_pending_age_minutes
                ),
                json!({ "oldest_seconds": age, "limit_minutes": a.max_pending_age_minutes }),
            )
            .await
        }
        _ => al.resolve("pending_age").await,
    }
    let slot = &rt.cfg.sync.slot_name;
    let steps = format!(
        "Local changes made while the slot was unusable were not captured. To recover: \
         1) stop the service (systemctl stop centrovision-sync / Stop-Service CentroVisionSync); \
         2) run `centrovision-sync resync` (recreates slot {slot} and reconciles both sides with verify --repair); \
         3) start the service. Consider raising max_slot_wal_keep_size."
    );
    match &st.slot {
        None => {
            rt.slot_ok.send_replace(false);
            al.raise("slot_missing", &format!("replication slot {slot} is missing. {steps}"), json!({ "slot": slot, "steps": steps }))
                .await;
        }
        Some(s) if s.wal_status.as_deref() == Some("lost") => {
            rt.slot_ok.send_replace(false);
            al.raise(
                "slot_lost",
                &format!("replication slot {slot} was invalidated (wal_status = lost). {steps}"),
                json!({ "slot": slot, "steps": steps }),
            )
            .await;
        }
        Some(s) => {
            rt.slot_ok.send_replace(true);
            al.resolve("slot_missing").await;
            al.resolve("slot_lost").await;
            let limit = (a.max_slot_lag_mb as i64).saturating_mul(1024 * 1024);
            match s.retained_bytes {
                Some(b) if b > limit => {
                    al.raise(
                        "slot_lag",
                        &format!("the slot retains {} MB of WAL (limit {} MB); disk may fill", b / (1024 * 1024), a.max_slot_lag_mb),
                        json!({ "retained_bytes": b, "limit_mb": a.max_slot_lag_mb }),
                    )
                    .await
                }
                _ => al.resolve("slot_lag").await,
            }
        }
    }
}

/// Writes connectivity and alerts to `_sync_state` for `status`.
async fn persist(rt: &Runtime, c: &Client) {
    let store = Store::new(c, LOCAL);
    let up = rt.upstream_link.state();
    let value = if up.online { "online" } else { "offline" };
    let _ = store.set_upstream_state(value, up.since_wall).await;
    let _ = store.set_alerts(&rt.alerter.active()).await;
}

/// Prunes old `_sync_log` rows and synced journal rows, in small batches.
async fn prune(rt: &Runtime, dbs: &LocalDbs) {
    let store = Store::new(&dbs.local, LOCAL);
    let journal = JournalStore::new(&dbs.journal, crate::error::JOURNAL);
    let batch = PRUNE_BATCH as i64;
    let days = rt.cfg.sync.log_retention_days as i32;
    let hours = rt.cfg.sync.journal_retention_hours as i32;
    for _ in 0..20 {
        match store.prune_log(days, batch).await {
            Ok(n) if n == PRUNE_BATCH => continue,
            _ => break,
        }
    }
    let _ = store.prune_history().await;
    for _ in 0..20 {
        match journal.prune_journal(hours, batch, &rt.cfg.sync.slot_name).await {
            Ok(n) if n > 0 => {
                tracing::debug!(rows = n, "pruned synced journal rows past retention");
                if n < batch {
                    break;
                }
            }
            _ => break,
        }
    }
}

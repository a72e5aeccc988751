//! `run` and `once`: the long-running service and its single-shot variant.
//!
//! Both hold an advisory lock on the local database for the slot, so a
//! second instance is refused with a clear message instead of fighting over
//! the slot. `once` emits a logical marker message first and captures until
//! it sees it, so "everything committed before it started" has a precise
//! meaning; it then drains the journal. `run` keeps capture and the pusher
//! going as independent tasks, restarting a failed task with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::catalog::{self, Table};
use crate::down;
use crate::config::Config;
use crate::error::{Class, Result, SyncError};
use crate::push;
use crate::lsn::Lsn;
use crate::replication::{self, connect_local};
use crate::upstream::{self, CONTRACT_VERSION, Upstream};

const LOCAL: &str = "local database";

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Holds the per-slot advisory lock for as long as it lives.
pub(crate) struct InstanceLock {
    _client: tokio_postgres::Client,
}

pub(crate) async fn acquire_instance_lock(cfg: &Config) -> Result<InstanceLock> {
    let client = connect_local(cfg).await?;
    let key = format!("centrovision-sync/{}", cfg.sync.slot_name);
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key])
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?
        .get(0);
    if !got {
        return Err(SyncError::operator(format!(
            "another centrovision-sync is already running for slot {} on this database",
            cfg.sync.slot_name
        ))
        .with_hint("stop the other instance first (systemctl status centrovision-sync), or give this one its own [sync] slot_name"));
    }
    Ok(InstanceLock { _client: client })
}

/// The local catalog of the synced tables, checked for syncability.
pub(crate) async fn local_tables(cfg: &Config) -> Result<BTreeMap<String, Table>> {
    let local = connect_local(cfg).await?;
    let ready: bool = local
        .query_one(
            "SELECT to_regclass('_sync_pending') IS NOT NULL AND to_regclass('_sync_capture') IS NOT NULL
                AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&cfg.sync.slot_name],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?
        .get(0);
    if !ready {
        return Err(SyncError::operator("the local database is not initialized for sync (control tables or slot missing)")
            .with_hint("run `centrovision-sync init` first"));
    }
    let tables = catalog::load(&local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    if let Some(missing) = cfg.sync.tables.iter().find(|t| !tables.contains_key(*t)) {
        return Err(SyncError::operator(format!("configured table {missing} does not exist locally"))
            .with_hint("create it, or remove it from [sync] tables"));
    }
    Ok(tables)
}

pub(crate) async fn check_contract(up: &upstream::Client) -> Result<()> {
    match up.contract_version().await? {
        Some(CONTRACT_VERSION) => Ok(()),
        Some(v) => Err(SyncError::operator(format!(
            "the upstream sync functions are version {v}; this build needs version {CONTRACT_VERSION}"
        ))
        .with_hint("run `centrovision-sync init --upstream` (postgres mode) or paste `init --print-upstream-sql` into the Supabase SQL editor")),
        None => Err(SyncError::operator("the upstream sync functions (public.centrovision_sync_apply) are not installed")
            .with_hint("run `centrovision-sync init --upstream` (postgres mode) or paste `init --print-upstream-sql` into the Supabase SQL editor")),
    }
}

fn upstream_schema(cfg: &Config) -> Option<&str> {
    (cfg.supabase.schema != "public").then_some(cfg.supabase.schema.as_str())
}

/// Pushes while capture runs; after `done` turns true, drains to empty.
async fn push_while(
    cfg: &Config,
    up: &upstream::Client,
    journaled: &Notify,
    mut done: watch::Receiver<bool>,
    give_up: bool,
) -> Result<push::DrainReport> {
    let local = connect_local(cfg).await?;
    let mut total = push::DrainReport::default();
    let started = std::time::Instant::now();
    let mut failures = 0u32;
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    loop {
        match push::push_batch(&local, up, cfg.sync.batch_size, upstream_schema(cfg), cfg.sync.retry_max_attempts).await {
            Ok(r) if r.rows == 0 => {
                if *done.borrow() {
                    break;
                }
                tokio::select! {
                    _ = journaled.notified() => {}
                    _ = done.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Ok(r) => {
                failures = 0;
                total.rows += r.rows;
                total.applied += r.applied;
                total.kept += r.kept;
                total.rejected += r.rejected;
                total.batches += 1;
                if r.should_back_off {
                    tokio::time::sleep(push::backoff(base, 0, Duration::from_secs(60))).await;
                }
            }
            Err(f) => {
                failures += 1;
                tracing::warn!(error = %f.error, attempt = failures, "push failed");
                if !f.ids.is_empty() {
                    let _ = crate::journal::record_failure(&local, &f.ids, &f.error.to_string(), false).await;
                }
                if give_up && (failures >= cfg.sync.retry_max_attempts || !f.error.is_transient()) {
                    return Err(f.error);
                }
                let cap = if f.error.class == Class::Transient { Duration::from_secs(60) } else { Duration::from_secs(300) };
                tokio::select! {
                    _ = tokio::time::sleep(push::backoff_after(base, failures - 1, cap, f.error.retry_after)) => {}
                    _ = done.changed(), if !give_up => {}
                }
                if !give_up && *done.borrow() {
                    break;
                }
            }
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

pub async fn once(cfg: &Config) -> Result<()> {
    let _lock = acquire_instance_lock(cfg).await?;
    let tables = local_tables(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let local = connect_local(cfg).await?;
    // Everything committed before this marker is what `once` delivers.
    let marker = replication::emit_marker(&local).await?;
    let journaled = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(Lsn::ZERO);
    let (caught_up_tx, caught_up_rx) = watch::channel(false);

    // Capture keeps running through the down cycle: the down path relies on
    // its progress to see local deletes as tombstones.
    let capture = replication::capture(cfg, &tables, stop_rx, journaled.clone(), &progress_tx);
    let work = async {
        let mut p = progress_rx.clone();
        let caught = async {
            let _ = p.wait_for(|l| *l >= marker).await;
            let _ = caught_up_tx.send(true);
        };
        let ((), pushed) = tokio::join!(caught, push_while(cfg, &up, &journaled, caught_up_rx, true));
        let pushed = pushed?;
        let parked: i64 = local
            .query_one("SELECT count(*) FROM _sync_pending WHERE parked_at IS NOT NULL AND synced = FALSE", &[])
            .await
            .map_err(|e| SyncError::from_pg(LOCAL, &e))?
            .get(0);
        tracing::info!(
            direction = "up",
            rows = pushed.rows,
            applied = pushed.applied,
            kept = pushed.kept,
            rejected = pushed.rejected,
            duration_ms = pushed.elapsed.as_millis() as u64,
            "up path drained"
        );
        if parked > 0 {
            tracing::warn!(parked, "some changes are parked with errors; see `centrovision-sync status`");
        }
        let session = down::Session::open(cfg).await?;
        let reports = down::cycle(cfg, &session, &up, &tables, &progress_rx).await?;
        let applied: u64 = reports.iter().map(|r| r.applied).sum();
        tracing::info!(direction = "down", rows = applied, tables = reports.len(), "down cycle done");
        if let Some(r) = reports.iter().find(|r| r.error.is_some()) {
            return Err(SyncError::operator(format!(
                "down sync of {} failed: {}",
                r.table,
                r.error.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    };
    tokio::pin!(capture);
    tokio::pin!(work);
    tokio::select! {
        r = &mut capture => {
            Err(r.err().unwrap_or_else(|| SyncError::transient("capture stopped unexpectedly")))
        }
        r = &mut work => {
            let _ = stop_tx.send(true);
            let cap = capture.await;
            r?;
            cap.map(|_| ())
        }
    }
}

pub async fn run(cfg: &Config) -> Result<()> {
    let _lock = acquire_instance_lock(cfg).await?;
    let tables = local_tables(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    if let Err(e) = check_contract(&up).await {
        if !e.is_transient() {
            return Err(e);
        }
        tracing::warn!(error = %e, "upstream unreachable at start; capturing locally until it is back");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let journaled = Arc::new(Notify::new());
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    let (progress_tx, progress_rx) = watch::channel(Lsn::ZERO);

    let capture_task = async {
        let mut attempt = 0u32;
        loop {
            if *stop_rx.borrow() {
                break;
            }
            match replication::capture(cfg, &tables, stop_rx.clone(), journaled.clone(), &progress_tx).await {
                Ok(_) => break,
                Err(e) => {
                    let cap = if e.class == Class::Transient { Duration::from_secs(60) } else { Duration::from_secs(300) };
                    let wait = push::backoff(base, attempt, cap);
                    attempt = attempt.saturating_add(1);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "capture failed");
                    let mut s = stop_rx.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.changed() => {}
                    }
                }
            }
        }
    };
    let push_task = async {
        let mut attempt = 0u32;
        loop {
            if *stop_rx.borrow() {
                break;
            }
            match push_while(cfg, &up, &journaled, stop_rx.clone(), false).await {
                Ok(_) => break,
                Err(e) => {
                    let wait = push::backoff(base, attempt, Duration::from_secs(60));
                    attempt = attempt.saturating_add(1);
                    tracing::error!(error = %e, "pusher failed");
                    let mut s = stop_rx.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.changed() => {}
                    }
                }
            }
        }
    };
    let down_task = async {
        let interval = Duration::from_secs(cfg.sync.interval_seconds);
        let mut session: Option<down::Session> = None;
        let mut attempt = 0u32;
        let mut stop = stop_rx.clone();
        loop {
            if *stop.borrow() {
                break;
            }
            if session.is_none() {
                match down::Session::open(cfg).await {
                    Ok(s) => session = Some(s),
                    Err(e) => tracing::error!(error = %e, "down path cannot open its local session"),
                }
            }
            let mut wait = interval;
            if let Some(s) = &session {
                match down::cycle(cfg, s, &up, &tables, &progress_rx).await {
                    Ok(_) => attempt = 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "down cycle failed");
                        if e.class == Class::Transient {
                            session = None;
                        }
                        wait = push::backoff(base, attempt, Duration::from_secs(60)).max(interval);
                        attempt = attempt.saturating_add(1);
                    }
                }
            } else {
                wait = push::backoff(base, attempt, Duration::from_secs(60));
                attempt = attempt.saturating_add(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    };
    tokio::join!(capture_task, push_task, down_task);
    tracing::info!("stopped");
    Ok(())
}

//! `run` and `once`: the long-running service and its single-shot variant.
//!
//! Both hold an advisory lock on the local database for the slot, so a
//! second instance is refused with a clear message instead of fighting over
//! the slot. `once` emits a logical marker message first and captures until
//! it sees it, so "everything committed before it started" has a precise
//! meaning; it then drains the journal. `run` keeps capture and the pusher
//! going as independent tasks, restarting a failed task with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::alerts::Alerter;
use crate::catalog::{self, Table};
use crate::config::Config;
use crate::connectivity::Link;
use crate::down;
use crate::error::{ErrorKind, Result, SyncError};
use crate::push;
use crate::lsn::Lsn;
use crate::replication::{self, connect_local};
use crate::upstream::{self, CONTRACT_VERSION, Upstream};

const LOCAL: crate::error::At = crate::error::At::local("local database");

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
    client: tokio_postgres::Client,
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
        return Err(SyncError::new(
            ErrorKind::SecondInstance,
            format!("another centrovision-sync is already running for slot {} on this database", cfg.sync.slot_name),
        ));
    }
    Ok(InstanceLock { client })
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
        return Err(SyncError::new(
            ErrorKind::NotInitialized,
            "the local database is not initialized for sync (control tables or slot missing)",
        ));
    }
    let tables = catalog::load(&local, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    if let Some(missing) = cfg.sync.tables.iter().find(|t| !tables.contains_key(*t)) {
        return Err(SyncError::new(ErrorKind::MissingObject, format!("configured table {missing} does not exist locally"))
            .with_hint("create it, or remove it from [sync] tables"));
    }
    Ok(tables)
}

pub(crate) async fn check_contract(up: &upstream::Client) -> Result<()> {
    match up.contract_version().await? {
        Some(CONTRACT_VERSION) => Ok(()),
        Some(v) => Err(SyncError::new(ErrorKind::Contract, format!(
            "the upstream sync functions are version {v}; this build needs version {CONTRACT_VERSION}"
        ))
        .with_hint("run `centrovision-sync init --upstream` (postgres mode) or paste `init --print-upstream-sql` into the Supabase SQL editor")),
        None => Err(SyncError::new(ErrorKind::Contract, "the upstream sync functions (public.centrovision_sync_apply) are not installed")
            .with_hint("run `centrovision-sync init --upstream` (postgres mode) or paste `init --print-upstream-sql` into the Supabase SQL editor")),
    }
}

/// Wakes the pusher (`to`) whenever capture journals something (`from`).
async fn forward(from: &Notify, to: &Notify) {
    loop {
        from.notified().await;
        to.notify_one();
    }
}

/// What the tasks of one process share.
pub(crate) struct Runtime {
    pub cfg: Config,
    pub upstream_link: Link,
    pub local_link: Link,
    pub alerter: Alerter,
    pub journaled: Notify,
    /// POST /sync: poll now instead of waiting for the interval.
    pub sync_now: Notify,
    /// False while the slot is missing or invalidated: pushing pauses.
    pub slot_ok: watch::Sender<bool>,
    pub pushed_total: AtomicU64,
    pub pulled_total: AtomicU64,
}

impl Runtime {
    fn new(cfg: &Config) -> Self {
        Runtime {
            cfg: cfg.clone(),
            upstream_link: Link::new("upstream"),
            local_link: Link::new("local database"),
            alerter: Alerter::new(cfg),
            journaled: Notify::new(),
            sync_now: Notify::new(),
            slot_ok: watch::channel(true).0,
            pushed_total: AtomicU64::new(0),
            pulled_total: AtomicU64::new(0),
        }
    }
}


/// Pushes journal rows. With `give_up` (for `once`): drains to empty after
/// `done` turns true and returns the error after `retry_max_attempts`
/// consecutive failures. Without it (for `run`): waits while upstream is
/// offline or the slot is unhealthy, retries forever with backoff.
async fn push_while(
    rt: &Runtime,
    up: &upstream::Client,
    mut done: watch::Receiver<bool>,
    give_up: bool,
) -> Result<push::DrainReport> {
    let cfg = &rt.cfg;
    let local = connect_local(cfg).await?;
    let streak = rt.alerter.streak("push");
    let mut total = push::DrainReport::default();
    let started = Instant::now();
    let mut failures = 0u32;
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    let mut cycle: HashMap<String, i64> = HashMap::new();
    let mut cycle_started = Instant::now();
    loop {
        if !give_up {
            rt.upstream_link.wait_online(&mut done).await;
            let mut slot = rt.slot_ok.subscribe();
            while !*slot.borrow_and_update() && !*done.borrow() {
                tokio::select! {
                    _ = slot.changed() => {}
                    _ = done.changed() => {}
                }
            }
            if *done.borrow() {
                break;
            }
        }
        // A restarted local database leaves this connection dead: let the
        // caller open a new one (it is not an upstream outage).
        if local.is_closed() {
            return Err(SyncError::new(ErrorKind::LocalUnreachable, "local database (pusher): connection closed"));
        }
        // Read before the fetch: an empty queue only means "done" if capture
        // had already passed its target when the queue was read.
        let finishing = *done.borrow();
        match push::push_batch(&local, up, cfg.sync.batch_size, cfg.upstream_schema(), cfg.sync.retry_max_attempts).await {
            Ok(r) if r.rows == 0 => {
                if !cycle.is_empty() {
                    log_cycle(&local, "UP", &cycle, cycle_started.elapsed()).await;
                    cycle.clear();
                }
                if finishing {
                    break;
                }
                tokio::select! {
                    _ = rt.journaled.notified() => {}
                    _ = rt.sync_now.notified() => {}
                    _ = done.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Ok(r) => {
                if failures > 0 || cycle.is_empty() {
                    cycle_started = Instant::now();
                }
                failures = 0;
                streak.succeeded().await;
                rt.upstream_link.report_ok();
                total.rows += r.rows;
                total.applied += r.applied;
                total.kept += r.kept;
                total.rejected += r.rejected;
                total.batches += 1;
                rt.pushed_total.fetch_add(r.rows as u64, Ordering::Relaxed);
                for (t, n) in r.per_table {
                    *cycle.entry(t).or_default() += n;
                }
                if r.should_back_off {
                    tokio::time::sleep(push::backoff(base, 0, Duration::from_secs(60))).await;
                }
            }
            Err(f) => {
                if local.is_closed() {
                    return Err(f.error);
                }
                failures += 1;
                if f.error.is_outage() && f.error.kind != ErrorKind::LocalUnreachable {
                    rt.upstream_link.report_down(&f.error);
                } else {
                    tracing::warn!(error = %f.error, attempt = failures, "push failed");
                }
                streak.failed(&f.error).await;
                if !f.ids.is_empty() {
                    let _ = crate::journal::record_failure(&local, &f.ids, &f.error.to_string(), false).await;
                }
                if failures == 1 {
                    log_error(&local, "UP", &f.error).await;
                }
                if give_up && (failures >= cfg.sync.retry_max_attempts || !f.error.is_transient()) {
                    return Err(f.error);
                }
                let cap = f.error.policy().retry.cap();
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

/// One `_sync_log` row per table for a finished cycle.
async fn log_cycle(local: &tokio_postgres::Client, direction: &str, per_table: &HashMap<String, i64>, took: Duration) {
    for (table, n) in per_table {
        tracing::info!(table = %table, direction, rows = n, duration_ms = took.as_millis() as u64, "sync");
        let _ = local
            .execute(
                "INSERT INTO _sync_log (direction, table_name, records_affected, status, duration_ms) VALUES ($1, $2, $3, 'SUCCESS', $4)",
                &[&direction, table, &(*n as i32), &(took.as_millis() as i32)],
            )
            .await;
    }
}

async fn log_error(local: &tokio_postgres::Client, direction: &str, e: &SyncError) {
    let _ = local
        .execute(
            "INSERT INTO _sync_log (direction, records_affected, status, error_message, duration_ms) VALUES ($1, 0, 'ERROR', $2, 0)",
            &[&direction, &e.to_string()],
        )
        .await;
}

pub async fn once(cfg: &Config) -> Result<()> {
    once_with(cfg, true).await
}

/// `once`; without `down`, only the up path (capture to now and push).
pub(crate) async fn once_with(cfg: &Config, down: bool) -> Result<()> {
    let _lock = acquire_instance_lock(cfg).await?;
    let tables = local_tables(cfg).await?;
    let up = upstream::Client::from_config(cfg)?;
    check_contract(&up).await?;
    let rt = Runtime::new(cfg);
    let local = connect_local(cfg).await?;
    // Everything committed before this marker is what `once` delivers.
    let marker = replication::emit_marker(&local).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(Lsn::ZERO);
    let (caught_up_tx, caught_up_rx) = watch::channel(false);

    // Capture keeps running through the down cycle: the down path relies on
    // its progress to see local deletes as tombstones.
    let journaled = Arc::new(Notify::new());
    let capture = async {
        tokio::select! {
            r = replication::capture(cfg, &tables, stop_rx, journaled.clone(), &progress_tx) => r,
            _ = forward(&journaled, &rt.journaled) => unreachable!("the forwarder never ends"),
        }
    };
    let work = async {
        let mut p = progress_rx.clone();
        let caught = async {
            let _ = p.wait_for(|l| *l >= marker).await;
            let _ = caught_up_tx.send(true);
        };
        let ((), pushed) = tokio::join!(caught, push_while(&rt, &up, caught_up_rx, true));
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
        if !down {
            return Ok(());
        }
        let session = down::Session::open(cfg).await?;
        let reports = down::cycle(cfg, &session, &up, &tables, &progress_rx).await?;
        let applied: u64 = reports.iter().map(|r| r.applied).sum();
        tracing::info!(direction = "down", rows = applied, tables = reports.len(), "down cycle done");
        if let Some(r) = reports.iter().find(|r| r.error.is_some()) {
            return Err(SyncError::new(ErrorKind::Refused, format!(
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
            Err(r.err().unwrap_or_else(|| SyncError::new(ErrorKind::LocalUnreachable, "capture stopped unexpectedly")))
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing the current step");
        let _ = on_signal.send(true);
    });
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    // Start-up waits out a local database that is restarting; definite
    // problems (no init, missing table, second instance) end the process.
    let mut attempt = 0u32;
    let (lock, tables) = loop {
        let started = async { Ok::<_, SyncError>((acquire_instance_lock(cfg).await?, local_tables(cfg).await?)) }.await;
        match started {
            Ok(v) => break v,
            Err(e) if e.is_transient() && !*stop_rx.borrow() => {
                let wait = push::backoff(base, attempt, Duration::from_secs(60));
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot start yet");
                let mut s = stop_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.changed() => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let up = upstream::Client::from_config(cfg)?;
    let rt = Arc::new(Runtime::new(cfg));
    // Whatever upstream says, capture must keep consuming the slot: an
    // unreachable or misconfigured upstream only delays pushing.
    if let Err(e) = check_contract(&up).await {
        // Nothing is pushed or polled until a health check succeeds.
        rt.upstream_link.report_down(&e);
        if e.is_transient() {
            tracing::warn!(error = %e, "upstream unreachable at start; capturing locally until it is back");
        } else {
            rt.alerter
                .raise("upstream_rejected", &format!("upstream is not ready: {e}"), serde_json::json!({ "error": e.to_string() }))
                .await;
        }
    }
    let lock_task = keep_instance_lock(cfg, lock, stop_rx.clone(), stop_tx.clone());
    let (progress_tx, progress_rx) = watch::channel(Lsn::ZERO);
    tracing::info!(
        tables = cfg.sync.tables.len(),
        mode = ?cfg.supabase.mode,
        slot = %cfg.sync.slot_name,
        "centrovision-sync running"
    );

    let capture_task = async {
        let journaled = Arc::new(Notify::new());
        let streak = rt.alerter.streak("capture");
        let work = async {
            let mut attempt = 0u32;
            loop {
                if *stop_rx.borrow() {
                    break;
                }
                match replication::capture(cfg, &tables, stop_rx.clone(), journaled.clone(), &progress_tx).await {
                    Ok(_) => break,
                    Err(e) => {
                        if matches!(e.kind, ErrorKind::SlotMissing | ErrorKind::SlotInvalidated) {
                            rt.slot_ok.send_replace(false);
                        }
                        if e.is_outage() {
                            rt.local_link.report_down(&e);
                        }
                        streak.failed(&e).await;
                        let cap = e.policy().retry.cap();
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
        tokio::select! {
            _ = work => {}
            _ = forward(&journaled, &rt.journaled) => {}
        }
    };
    let push_task = async {
        let mut attempt = 0u32;
        loop {
            if *stop_rx.borrow() {
                break;
            }
            match push_while(&rt, &up, stop_rx.clone(), false).await {
                Ok(_) => break,
                Err(e) => {
                    if e.is_outage() {
                        rt.local_link.report_down(&e);
                    }
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
        let streak = rt.alerter.streak("down");
        let mut session: Option<down::Session> = None;
        let mut attempt = 0u32;
        let mut stop = stop_rx.clone();
        loop {
            rt.upstream_link.wait_online(&mut stop).await;
            if *stop.borrow() {
                break;
            }
            if session.is_none() {
                match down::Session::open(cfg).await {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        if e.is_outage() {
                            rt.local_link.report_down(&e);
                        }
                        streak.failed(&e).await;
                        tracing::error!(error = %e, "down path cannot open its local session");
                    }
                }
            }
            let mut wait = interval;
            if let Some(s) = &session {
                match down::cycle(cfg, s, &up, &tables, &progress_rx).await {
                    Ok(reports) => {
                        attempt = 0;
                        streak.succeeded().await;
                        rt.upstream_link.report_ok();
                        let n: u64 = reports.iter().map(|r| r.applied).sum();
                        rt.pulled_total.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if e.is_outage() {
                            rt.upstream_link.report_down(&e);
                        } else {
                            tracing::warn!(error = %e, "down cycle failed");
                        }
                        streak.failed(&e).await;
                        if e.is_transient() {
                            session = None;
                        }
                        wait = push::backoff_after(base, attempt, Duration::from_secs(60), e.retry_after).max(interval.min(Duration::from_secs(5)));
                        attempt = attempt.saturating_add(1);
                    }
                }
            } else {
                wait = push::backoff(base, attempt, Duration::from_secs(60));
                attempt = attempt.saturating_add(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rt.sync_now.notified() => {}
                _ = stop.changed() => {}
            }
        }
    };
    let health_task = super::health::watch(&rt, &up, stop_rx.clone());
    let audit_task = async {
        let Some((h, m)) = cfg.audit.daily_at else { return };
        let mut stop = stop_rx.clone();
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
            match super::recovery::audit(cfg, &up).await {
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
    };
    let http_task = async {
        if let Some(addr) = cfg.http.listen {
            if let Err(e) = super::http::serve(addr, rt.clone(), stop_rx.clone()).await {
                tracing::error!(error = %e, "http listener failed");
            }
        }
    };
    let (lost_lock, ..) = tokio::join!(lock_task, capture_task, push_task, down_task, health_task, http_task, audit_task);
    lost_lock?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Holds the instance lock for the life of the process. Its connection dies
/// with a local database restart, which releases the lock: take it again,
/// and stop the service if another instance took it meanwhile.
async fn keep_instance_lock(
    cfg: &Config,
    mut lock: InstanceLock,
    mut stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
) -> Result<()> {
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    let mut attempt = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return Ok(());
        }
        if !lock.client.is_closed() {
            continue;
        }
        match acquire_instance_lock(cfg).await {
            Ok(l) => {
                lock = l;
                attempt = 0;
            }
            Err(e) if e.is_transient() => {
                tokio::time::sleep(push::backoff(base, attempt, Duration::from_secs(30))).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "lost the instance lock to another process; stopping");
                let _ = stop_tx.send(true);
                return Err(e);
            }
        }
    }
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

//! The service: `run`, the long-running process, and `once`, its
//! single-shot variant. The CLI (`crate::commands`) only calls in here.
//!
//! `run` starts when it holds the per-slot instance lock ([`lock`]) and the
//! local database is ready ([`readiness`]) — waiting out a local database
//! that is restarting, refusing a definite problem (no `init`, a missing
//! table, a second instance) with exit code 1 — then runs seven tasks until
//! SIGINT/SIGTERM ([`signals`]):
//!
//! ```text
//!          local PostgreSQL                                upstream (Supabase)
//!   slot ──pgoutput──► capture ──► _sync_pending ──► push ──apply──► centrovision_sync_apply
//!                         │ progress (LSN)     ▲ journaled (wake)
//!                         ▼                    │
//!   local tables ◄──────────────── down ◄──────┴──────── keyset pages of each table
//!
//!   lock    keeps the instance lock (a definite loss stops every task)
//!   health  checks both links, raises/resolves alerts, writes _sync_state, prunes
//!   audit   compares both sides daily (optional)      http  /health /status /metrics /sync
//!   files   mirrors Storage objects named by study_files ([storage], optional)
//! ```
//!
//! Rules:
//!
//! - **One task per concern, one file per task**; they share a
//!   [`runtime::Runtime`] (links, alerter, wake-ups, counters) and a stop
//!   signal, and end their current step when it fires.
//! - **Restarts**: capture, push, down and the lock run under one
//!   [`supervise`](supervise::supervise): after a failure, exponential
//!   backoff with jitter from `[sync] retry_delay_seconds`, capped at 60 s
//!   for transient errors and 300 s for those that need a person (the
//!   error's [`policy`](crate::error::policy)), never sooner than
//!   `Retry-After`. Consecutive failures raise `<task>_failing` alerts.
//! - **Waiting instead of failing**: an outage (the error policy's
//!   `outage`) marks its link offline, logged once per edge; push and down
//!   wait until a health check finds it back, while capture keeps
//!   journaling locally. A missing or invalidated slot pauses pushing until
//!   the health check sees it healthy.
//! - **Progress** only moves after success: the slot is confirmed after the
//!   journal's local commit ([`crate::replication`]), a journal row is
//!   marked synced after upstream answered for it ([`crate::push`]), a
//!   table's down watermark in the same local transaction as the page it
//!   read — which, when it inserted rows, first waits for capture's
//!   progress to pass the page's read position ([`crate::down`]). A task
//!   that fails or is killed between those steps repeats work; it never
//!   skips any.
//!
//! `once` ([`once`]) is the same capture and push, bounded: capture up to a
//! marker emitted at start, drain the journal, one down cycle, exit; it
//! gives up where `run` would retry.

mod access;
mod audit;
mod capture;
mod down;
mod files;
mod health;
mod http;
mod lock;
mod once;
mod push;
mod readiness;
mod runtime;
mod signals;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Level;

pub use audit::compare_tables;
pub use lock::{Grace, InstanceLock, acquire_instance_lock};
pub(crate) use once::once_with;
pub use once::{capture_to_now, once};
pub use readiness::{check_cluster, check_contract, local_tables, open_journal};
pub use signals::shutdown_signal;

use crate::config::Config;
use crate::error::{Result, TRANSIENT_CAP};
use crate::lsn::Lsn;
use crate::upstream;
use runtime::Runtime;
use supervise::{Cap, GiveUp, Next, Restart, supervise};

/// Runs the service until SIGINT/SIGTERM.
pub async fn run(cfg: &Config) -> Result<()> {
    let (stop_all, stop) = watch::channel(false);
    let stop_all = Arc::new(stop_all);
    let on_signal = stop_all.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing the current step");
        let _ = on_signal.send(true);
    });
    // Start-up waits out a local database that is restarting; definite
    // problems (no init, missing table, second instance) end the process.
    let start = Restart {
        base: Duration::from_secs(cfg.sync.retry_delay_seconds),
        cap: Cap::Fixed(TRANSIENT_CAP),
        floor: Duration::ZERO,
        give_up: GiveUp::OnDefinite,
        log: Some((Level::WARN, "cannot start yet")),
        wake: None,
    };
    let started =
        supervise("start-up", start, &stop, || async { Ok(Next::Done((acquire_instance_lock(cfg).await?, local_tables(cfg).await?))) })
            .await?;
    let Some((lock, tables)) = started else {
        tracing::info!("stopped cleanly");
        return Ok(());
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
    let (progress_tx, progress_rx) = watch::channel(Lsn::ZERO);
    tracing::info!(
        tables = cfg.sync.tables.len(),
        mode = ?cfg.supabase.mode,
        slot = %cfg.sync.slot_name,
        "centrovision-sync running"
    );
    let (lost_lock, ..) = tokio::join!(
        lock::task(cfg, lock, &stop, &stop_all),
        capture::task(&rt, &tables, &stop, &progress_tx),
        push::task(&rt, &up, &stop),
        down::task(&rt, &up, &tables, &progress_rx, &stop),
        health::task(&rt, &up, stop.clone()),
        http::task(rt.clone(), stop.clone()),
        audit::task(&rt, &up, stop.clone()),
        files::task(&rt, &stop),
    );
    lost_lock?;
    tracing::info!("stopped cleanly");
    Ok(())
}

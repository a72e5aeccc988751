//! `once`: capture everything committed before it started, push it, run one
//! down cycle, and exit.
//!
//! It emits a logical marker message first and captures until it sees it,
//! so "everything committed before it started" has a precise meaning; it
//! then drains the journal. Unlike `run`, it gives up: on a failure that
//! needs a person at once, on a transient one after `retry_max_attempts`.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use super::lock::{InstanceLock, acquire_instance_lock};
use super::push::push_while;
use super::readiness::{check_contract, local_tables};
use super::runtime::{Runtime, forward};
use crate::config::{Config, connect_local};
use crate::down;
use crate::error::{ErrorKind, Result, SyncError};
use crate::lsn::Lsn;
use crate::replication;
use crate::upstream;

/// Captures everything committed before it started, pushes it, runs one
/// down cycle, and returns.
pub async fn once(cfg: &Config) -> Result<()> {
    once_with(cfg, true).await
}

/// `once`; without `down`, only the up path (capture to now and push).
pub(crate) async fn once_with(cfg: &Config, down: bool) -> Result<()> {
    let lock = acquire_instance_lock(cfg).await?;
    let result = once_locked(cfg, down).await;
    lock.release().await;
    result
}

async fn once_locked(cfg: &Config, down: bool) -> Result<()> {
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
        let parked = crate::store::JournalStore::new(&crate::config::connect_journal(cfg).await?, crate::error::JOURNAL).parked().await?;
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
        down::remove_moved_away(cfg, &session, &up, &tables, &progress_rx).await?;
        let reports = down::cycle(cfg, &session, &up, &tables, &progress_rx).await;
        session.close().await;
        let reports = reports?;
        let applied: u64 = reports.iter().map(|r| r.applied).sum();
        tracing::info!(direction = "down", rows = applied, tables = reports.len(), "down cycle done");
        if let Some(r) = reports.iter().find(|r| r.error.is_some()) {
            return Err(SyncError::new(
                ErrorKind::Refused,
                format!("down sync of {} failed: {}", r.table, r.error.as_deref().unwrap_or_default()),
            ));
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

/// Captures into the journal everything committed before it started, and
/// pushes nothing: for a command that judges the journal complete
/// (`drop-branch-rows`: a change made while the service was stopped is in
/// the slot, not yet in the journal). Holds the instance lock, and returns
/// it for the caller to keep while it acts on that judgement; a running
/// service (which holds it) is refused.
pub async fn capture_to_now(cfg: &Config) -> Result<InstanceLock> {
    let lock = acquire_instance_lock(cfg).await?;
    let tables = local_tables(cfg).await?;
    let marker = replication::emit_marker(&connect_local(cfg).await?).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, mut progress_rx) = watch::channel(Lsn::ZERO);
    let capture = replication::capture(cfg, &tables, stop_rx, Arc::new(Notify::new()), &progress_tx);
    tokio::pin!(capture);
    tokio::select! {
        r = &mut capture => {
            return Err(r.err().unwrap_or_else(|| SyncError::new(ErrorKind::LocalUnreachable, "capture stopped unexpectedly")));
        }
        r = progress_rx.wait_for(|l| *l >= marker) => {
            if r.is_err() {
                return Err(SyncError::new(ErrorKind::LocalUnreachable, "capture stopped unexpectedly"));
            }
        }
    }
    let _ = stop_tx.send(true);
    capture.await?;
    Ok(lock)
}

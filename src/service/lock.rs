//! The per-slot instance lock.
//!
//! `run`, `once` and `resync` hold an advisory lock on the local database,
//! keyed by the slot name, so a second instance is refused with a clear
//! message instead of fighting over the slot. Under `run` the lock task
//! keeps it: a local database restart drops the lock's connection (and the
//! lock), so it is taken again; if another instance took it meanwhile, the
//! service stops. Commands release it explicitly when done
//! ([`InstanceLock::release`]), and taking it waits a few seconds for an
//! instance that is stopping: the server frees the lock of a process that
//! exited only when it notices the closed connection.

use std::time::Duration;

use tokio::sync::watch;

use super::supervise::{Cap, GiveUp, Next, Restart, supervise};
use crate::config::{Config, connect_local};
use crate::error::{ErrorKind, LOCAL, Result, SyncError};

/// How long taking the lock (or the replication origin's session) waits for
/// an instance that is stopping: the server releases them only when it
/// notices the client is gone, a moment after that process exited (a
/// restart by systemd, a command right after another).
pub const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The wait of [`RELEASE_GRACE`]: started when something is first found
/// taken, it pauses between tries until the grace is over.
pub struct Grace(tokio::time::Instant);

impl Grace {
    pub fn start() -> Self {
        Grace(tokio::time::Instant::now() + RELEASE_GRACE)
    }

    /// Pauses before the next try and returns true, or returns false at
    /// once when the grace is over.
    pub async fn pause(&self) -> bool {
        if tokio::time::Instant::now() >= self.0 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        true
    }
}

/// Holds the per-slot advisory lock for as long as it lives.
pub struct InstanceLock {
    client: tokio_postgres::Client,
    key: String,
}

impl InstanceLock {
    /// Releases the lock now and waits for the server to confirm, so the
    /// next command (or the next step of this one) finds it free at once.
    /// (Dropping it releases it too, once the server notices the closed
    /// connection.)
    pub async fn release(self) {
        if let Err(e) = self.client.query_one("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&self.key]).await {
            tracing::debug!(error = %e, "instance lock: release failed; the server releases it with the connection");
        }
    }
}

pub async fn acquire_instance_lock(cfg: &Config) -> Result<InstanceLock> {
    let client = connect_local(cfg).await?;
    let key = format!("centrovision-sync/{}", cfg.sync.slot_name);
    let grace = Grace::start();
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&key])
            .await
            .map_err(|e| SyncError::from_pg(LOCAL, &e))?
            .get(0);
        if got {
            return Ok(InstanceLock { client, key });
        }
        if !grace.pause().await {
            return Err(SyncError::new(
                ErrorKind::SecondInstance,
                format!(
                    "another centrovision-sync is already running for slot {} on this database (its lock stayed taken for {} s)",
                    cfg.sync.slot_name,
                    RELEASE_GRACE.as_secs()
                ),
            ));
        }
    }
}

/// The lock task: checks the lock's connection every second and takes the
/// lock again after a restart. Losing it to another process stops the
/// whole service (`stop_all`) and returns that error.
pub(crate) async fn task(cfg: &Config, lock: InstanceLock, stop: &watch::Receiver<bool>, stop_all: &watch::Sender<bool>) -> Result<()> {
    let restart = Restart {
        base: Duration::from_secs(cfg.sync.retry_delay_seconds),
        cap: Cap::Fixed(Duration::from_secs(30)),
        floor: Duration::ZERO,
        give_up: GiveUp::OnDefinite,
        log: None,
        wake: None,
    };
    // The lock, replaced after a restart (its connection died with it).
    let held = &tokio::sync::Mutex::new(lock);
    let kept = supervise("instance lock", restart, stop, || async move {
        let mut tick = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tick.changed() => {}
        }
        if *tick.borrow() {
            return Ok(Next::Done(()));
        }
        let mut lock = held.lock().await;
        if lock.client.is_closed() {
            *lock = acquire_instance_lock(cfg).await?;
        }
        Ok(Next::Again(Duration::ZERO))
    })
    .await;
    match kept {
        Err(e) if !e.is_transient() => {
            tracing::error!(error = %e, "lost the instance lock to another process; stopping");
            let _ = stop_all.send(true);
            Err(e)
        }
        // Stopped (while retrying a restarting database, too).
        _ => Ok(()),
    }
}

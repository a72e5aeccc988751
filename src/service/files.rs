//! The study-files task: runs the storage queue's cycle
//! ([`crate::storage::queue::cycle`]) every `[sync] interval_seconds` (at
//! once on POST /sync), in its own task with its own local connection, so
//! a large transfer never holds up table sync. Off without `[storage]`.
//!
//! After a failure it backs off like every task (an unreachable Storage
//! is transient; a rejected key needs the operator and raises
//! `files_failing`); a partial download resumes on the next run. After
//! each cycle it publishes the queue's figures for `/metrics` and raises
//! `files_waiting` while a file has waited longer than `[storage]
//! alert_after_minutes` (resolved when none has).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::runtime::Runtime;
use super::supervise::{Cap, GiveUp, Next, Restart, supervise};
use crate::config::connect_local;
use crate::error::{At, TRANSIENT_CAP};
use crate::storage::StorageClient;
use crate::storage::queue;
use crate::store::Store;

const AT: At = At::local("local database (study files)");

pub(crate) async fn task(rt: &Runtime, stop: &watch::Receiver<bool>) {
    let cfg = &rt.cfg;
    let Some(storage) = &cfg.storage else { return };
    let client = match StorageClient::from_config(cfg) {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "study files are not mirrored");
            return;
        }
    };
    let interval = Duration::from_secs(cfg.sync.interval_seconds);
    let streak = &rt.alerter.streak("files");
    let restart = Restart {
        base: rt.retry_base(),
        cap: Cap::Fixed(TRANSIENT_CAP),
        floor: interval.min(Duration::from_secs(5)),
        give_up: GiveUp::Never,
        log: None,
        wake: Some(&rt.sync_now),
    };
    let conn = &tokio::sync::Mutex::new(None::<tokio_postgres::Client>);
    let client = &client;
    let _ = supervise("files", restart, stop, || async move {
        let mut conn = conn.lock().await;
        let c = match &mut *conn {
            Some(c) if !c.is_closed() => c,
            _ => match connect_local(cfg).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    streak.failed(&e).await;
                    return Err(e);
                }
            },
        };
        let store = Store::new(c, AT);
        match queue::cycle(&store, client, storage, &cfg.local_postgres.schema, &cfg.sync.clinic_id).await {
            Ok(r) => {
                streak.succeeded().await;
                let f = &rt.files;
                f.downloaded.fetch_add(r.downloaded, Ordering::Relaxed);
                f.uploaded.fetch_add(r.uploaded, Ordering::Relaxed);
                f.conflicts.fetch_add(r.conflicts, Ordering::Relaxed);
                f.bytes.fetch_add(r.bytes, Ordering::Relaxed);
                if let Ok(s) = store.files_summary().await {
                    f.pending.store(s.pending, Ordering::Relaxed);
                    f.pending_bytes.store(s.pending_bytes, Ordering::Relaxed);
                    let oldest = s.oldest_waiting_seconds.unwrap_or(0);
                    f.oldest_waiting_seconds.store(oldest, Ordering::Relaxed);
                    if oldest > (storage.alert_after_minutes * 60) as i64 {
                        rt.alerter
                            .raise(
                                "files_waiting",
                                &format!("{} study file(s) waiting to move, the oldest for {} min", s.pending, oldest / 60),
                                serde_json::json!({ "pending": s.pending, "pending_bytes": s.pending_bytes, "oldest_waiting_seconds": oldest }),
                            )
                            .await;
                    } else {
                        rt.alerter.resolve("files_waiting").await;
                    }
                }
                Ok(Next::<()>::Again(interval))
            }
            Err(e) => {
                tracing::warn!(error = %e, "study files cycle failed");
                streak.failed(&e).await;
                if e.is_outage() {
                    *conn = None;
                }
                Err(e)
            }
        }
    })
    .await;
}

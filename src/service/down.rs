//! The down task: polls upstream every `[sync] interval_seconds` (or at
//! once on POST /sync) and applies what changed to the local tables
//! ([`crate::down::cycle`]).
//!
//! It waits while upstream is offline; after a failed cycle it backs off
//! (never sooner than the interval, up to 5 s, nor than `Retry-After`) and
//! opens a new local session after a transient failure. Each failure counts
//! towards the `down_failing` alert.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::runtime::Runtime;
use super::supervise::{Cap, GiveUp, Next, Restart, supervise};
use crate::catalog::Table;
use crate::down;
use crate::error::TRANSIENT_CAP;
use crate::lsn::Lsn;
use crate::upstream;

pub(crate) async fn task(
    rt: &Runtime,
    up: &upstream::Client,
    tables: &BTreeMap<String, Table>,
    progress: &watch::Receiver<Lsn>,
    stop: &watch::Receiver<bool>,
) {
    let cfg = &rt.cfg;
    let interval = Duration::from_secs(cfg.sync.interval_seconds);
    let streak = rt.alerter.streak("down");
    let restart = Restart {
        base: rt.retry_base(),
        cap: Cap::Fixed(TRANSIENT_CAP),
        floor: interval.min(Duration::from_secs(5)),
        give_up: GiveUp::Never,
        log: None,
        wake: Some(&rt.sync_now),
    };
    // The local session writing under the replication origin, opened
    // again after a transient failure.
    let session = &tokio::sync::Mutex::new(None::<down::Session>);
    let streak = &streak;
    let _ = supervise("down", restart, stop, || async move {
        let mut online = stop.clone();
        rt.upstream_link.wait_online(&mut online).await;
        if *online.borrow() {
            return Ok(Next::Done(()));
        }
        let mut session = session.lock().await;
        let s = match &mut *session {
            Some(s) => s,
            None => match down::Session::open(cfg).await {
                Ok(s) => session.insert(s),
                Err(e) => {
                    if e.is_outage() {
                        rt.local_link.report_down(&e);
                    }
                    streak.failed(&e).await;
                    tracing::error!(error = %e, "down path cannot open its local session");
                    return Err(e);
                }
            },
        };
        if let Err(e) = down::remove_moved_away(cfg, s, up, tables, progress).await {
            tracing::warn!(error = %e, "rows moved to other branches not removed yet");
            if e.is_transient() {
                *session = None;
            }
            return Err(e);
        }
        match down::cycle(cfg, s, up, tables, progress).await {
            Ok(reports) => {
                streak.succeeded().await;
                rt.upstream_link.report_ok();
                let n: u64 = reports.iter().map(|r| r.applied).sum();
                rt.pulled_total.fetch_add(n, Ordering::Relaxed);
                Ok(Next::Again(interval))
            }
            Err(e) => {
                // As any task that needs upstream: an outage pauses it until
                // a health check succeeds.
                if e.is_outage() {
                    rt.upstream_link.report_down(&e);
                } else {
                    tracing::warn!(error = %e, "down cycle failed");
                }
                streak.failed(&e).await;
                if e.is_transient() {
                    *session = None;
                }
                Err(e)
            }
        }
    })
    .await;
}

//! The capture task: streams the slot into the journal
//! ([`crate::replication::capture`]) for as long as the service runs.
//!
//! Restarted after any failure, backing off as the error's policy says. A
//! missing or invalidated slot pauses the pusher (`slot_ok`) until the
//! health check sees the slot healthy again; a lost connection marks the
//! local database offline. Each failure counts towards the `capture_failing`
//! alert.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tracing::Level;

use super::runtime::{Runtime, forward};
use super::supervise::{Cap, GiveUp, Next, Restart, supervise};
use crate::catalog::Table;
use crate::error::ErrorKind;
use crate::replication::{self, Progress};

pub(crate) async fn task(rt: &Runtime, tables: &BTreeMap<String, Table>, stop: &watch::Receiver<bool>, progress: &Progress) {
    let journaled = Arc::new(Notify::new());
    let streak = rt.alerter.streak("capture");
    let restart = Restart {
        base: rt.retry_base(),
        cap: Cap::ByKind,
        floor: std::time::Duration::ZERO,
        give_up: GiveUp::Never,
        log: Some((Level::ERROR, "capture failed")),
        wake: None,
    };
    let (wake, streak) = (&journaled, &streak);
    let work = supervise("capture", restart, stop, || async move {
        match replication::capture(&rt.cfg, tables, stop.clone(), wake.clone(), progress).await {
            Ok(_) => Ok(Next::Done(())),
            Err(e) => {
                if matches!(e.kind, ErrorKind::SlotMissing | ErrorKind::SlotInvalidated) {
                    rt.slot_ok.send_replace(false);
                }
                if e.is_outage() {
                    rt.local_link.report_down(&e);
                }
                streak.failed(&e).await;
                Err(e)
            }
        }
    });
    tokio::select! {
        _ = work => {}
        _ = forward(&journaled, &rt.journaled) => {}
    }
}

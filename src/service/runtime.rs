//! What the tasks of one service process share: the config, the state of
//! both links, the alerter, the wake-ups between tasks and the counters
//! `/metrics` reports.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::alerts::Alerter;
use crate::config::Config;
use crate::connectivity::Link;

pub(crate) struct Runtime {
    pub cfg: Config,
    pub upstream_link: Link,
    pub local_link: Link,
    pub alerter: Alerter,
    /// Capture journaled something: the pusher has work.
    pub journaled: Notify,
    /// POST /sync: poll now instead of waiting for the interval.
    pub sync_now: Notify,
    /// False while the slot is missing or invalidated: pushing pauses.
    pub slot_ok: watch::Sender<bool>,
    pub pushed_total: AtomicU64,
    pub pulled_total: AtomicU64,
    /// The study-files task's figures (`[storage]`).
    pub files: crate::storage::Counters,
}

impl Runtime {
    pub fn new(cfg: &Config) -> Self {
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
            files: Default::default(),
        }
    }

    /// The first delay of every backoff (`[sync] retry_delay_seconds`).
    pub fn retry_base(&self) -> Duration {
        Duration::from_secs(self.cfg.sync.retry_delay_seconds)
    }
}

/// Wakes `to` whenever `from` fires (capture's own notifier to the
/// pusher's); never returns.
pub(crate) async fn forward(from: &Notify, to: &Notify) {
    loop {
        from.notified().await;
        to.notify_one();
    }
}

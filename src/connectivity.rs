//! Connectivity of the two databases as the service experiences it.
//!
//! Clinics lose internet often. An outage is logged once when it starts
//! ("upstream offline") and once when it ends ("upstream back online after
//! …"), not on every retry; while upstream is offline the pusher and the
//! poller wait (capture keeps journaling locally), and they resume the moment
//! a health check succeeds. The same goes for the local database being
//! restarted. Transitions are also written to `_sync_state` for `status`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct LinkState {
    pub online: bool,
    /// When the current state began.
    pub since: Instant,
    pub since_wall: DateTime<Utc>,
}

/// One link (upstream, local database).
pub struct Link {
    pub name: &'static str,
    state: watch::Sender<LinkState>,
}

impl Link {
    pub fn new(name: &'static str) -> Self {
        let (state, _) = watch::channel(LinkState { online: true, since: Instant::now(), since_wall: Utc::now() });
        Link { name, state }
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    pub fn is_online(&self) -> bool {
        self.state.borrow().online
    }

    /// Records a success; returns true when this ends an outage.
    pub fn report_ok(&self) -> bool {
        let mut ended = None;
        self.state.send_if_modified(|s| {
            if s.online {
                return false;
            }
            ended = Some(s.since.elapsed());
            *s = LinkState { online: true, since: Instant::now(), since_wall: Utc::now() };
            true
        });
        if let Some(d) = ended {
            tracing::info!(link = self.name, outage_seconds = d.as_secs(), "{} back online after {}", self.name, human(d));
            return true;
        }
        false
    }

    /// Records a connectivity failure; returns true when this starts an outage.
    pub fn report_down(&self, error: &dyn std::fmt::Display) -> bool {
        let started = self.state.send_if_modified(|s| {
            if !s.online {
                return false;
            }
            *s = LinkState { online: false, since: Instant::now(), since_wall: Utc::now() };
            true
        });
        if started {
            tracing::warn!(link = self.name, error = %error, "{} offline; changes keep being captured locally and will be sent when it is back", self.name);
        }
        started
    }

    /// Waits until the link is online (or `stop` turns true).
    pub async fn wait_online(&self, stop: &mut watch::Receiver<bool>) {
        let mut rx = self.state.subscribe();
        loop {
            if rx.borrow_and_update().online || *stop.borrow() {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.changed() => {}
            }
        }
    }
}

/// "3 min 20 s" style durations for log lines.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_at_each_edge() {
        let l = Link::new("upstream");
        assert!(!l.report_ok());
        assert!(l.report_down(&"x"));
        assert!(!l.report_down(&"x"), "second failure of the same outage must not log again");
        assert!(!l.is_online());
        assert!(l.report_ok());
        assert!(!l.report_ok());
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(human(Duration::from_secs(7300)), "2 h 1 min");
    }
}

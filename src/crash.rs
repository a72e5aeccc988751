//! Named crash points for the crash-recovery tests.
//!
//! The durability rules are only as good as the moments between their steps,
//! so the tests kill the service exactly there: when the environment
//! variable `CENTROVISION_SYNC_CRASH_AT` names a point (`NAME` or `NAME:N`
//! for its N-th hit), the process aborts on the spot — no destructors, no
//! flushed acknowledgement, the same as SIGKILL. Unset (always, in
//! production) a point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CRASH_ENV: &str = "CENTROVISION_SYNC_CRASH_AT";

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(CRASH_ENV).ok()?;
            let (name, nth) = match v.rsplit_once(':') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (v, 1),
            };
            Some(Armed { name, nth, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Aborts the process if this point is armed and reached its N-th hit.
pub fn point(name: &str) {
    if let Some(a) = armed() {
        if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) + 1 >= a.nth {
            eprintln!("crash point {name} reached: aborting");
            std::process::abort();
        }
    }
}

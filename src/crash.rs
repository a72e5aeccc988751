//! Named crash points for the crash-recovery tests.
//!
//! The durability rules are only as good as the moments between their steps,
//! so the tests kill the service exactly there: when the environment
//! variable `CENTROVISION_SYNC_CRASH_AT` names a point (`NAME` or `NAME:N`
//! for its N-th hit), the process aborts on the spot — no destructors, no
//! flushed acknowledgement, the same as SIGKILL. With the variable unset, a
//! point costs one relaxed atomic load.
//!
//! All of this exists only with the `crash-points` feature, which the
//! integration tests enable for the binary they run (see Cargo.toml).
//! Without it (`cargo build --release`, the shipped service) [`point`] is an
//! empty inline function: no check, no environment variable, no abort.

#[cfg(feature = "crash-points")]
use std::sync::OnceLock;
#[cfg(feature = "crash-points")]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "crash-points")]
pub const CRASH_ENV: &str = "CENTROVISION_SYNC_CRASH_AT";

#[cfg(feature = "crash-points")]
struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

#[cfg(feature = "crash-points")]
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
#[cfg(feature = "crash-points")]
pub fn point(name: &str) {
    if let Some(a) = armed()
        && a.name == name
        && a.hits.fetch_add(1, Ordering::Relaxed) + 1 >= a.nth
    {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Without the `crash-points` feature: nothing (see the module docs).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &str) {}

//! Polling with a deadline: the only way tests wait.
//!
//! Replication, restarts and background workers make outcomes eventually
//! true, not immediately true. Fixed sleeps make tests slow when they are too
//! long and flaky when they are too short, so tests poll a condition instead
//! and fail with a description of what they were waiting for (and, with
//! [`wait_for_state`], what they last saw) when the deadline passes.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// First pause between polls; doubles up to [`MAX_POLL_INTERVAL`].
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(5);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Poll `f` until it returns `Some(v)`, then return `v`.
///
/// Panics with `what` once `timeout` has passed. A single call to `f` that is
/// still pending at the deadline is abandoned (so a hung query can't hang the
/// test past its timeout).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_state(what, timeout, move || {
        let attempt = f();
        async move { attempt.await.ok_or(NotYet) }
    })
    .await
}

/// The "last observed state" of a plain [`wait_for`]: the closure said `None`.
struct NotYet;

impl Debug for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None (condition not met yet)")
    }
}

/// Like [`wait_for`], but `f` returns `Err(state)` while the condition does not
/// hold; the last `state` is printed in the panic message, which makes a
/// timed-out wait diagnosable ("expected 3 rows, last saw 2").
pub async fn wait_for_state<T, S, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    // Real time, not tokio time: a paused tokio clock must not make the
    // deadline pass (or never pass) while we wait on real I/O.
    let started = Instant::now();
    let deadline = started + timeout;
    let mut interval = FIRST_POLL_INTERVAL;
    let mut attempts: u64 = 0;
    let last: String;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining.max(Duration::from_millis(1)), f()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(state)) => {
                if Instant::now() >= deadline {
                    last = format!("{state:?}");
                    break;
                }
            }
            Err(_elapsed) => {
                last = "the last attempt was still running at the deadline".to_owned();
                break;
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(interval.min(remaining)).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
    panic!(
        "timed out after {:.1?} (limit {timeout:?}, {attempts} attempts) waiting for: {what}\n\
         last observed state: {last}",
        started.elapsed()
    );
}

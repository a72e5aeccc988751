//! One supervisor for every task of the service.
//!
//! A task is run; when it fails, the supervisor waits — exponential backoff
//! with jitter from `[sync] retry_delay_seconds`, capped by the error's
//! [`policy`](crate::error::policy) (a minute when transient, five when a
//! person must act) or by the task's own cap, never sooner than the
//! server's `Retry-After` — and runs it again. A stop request ends the
//! wait at once. The task itself reports its failure where it matters (a
//! link going offline, an alert streak); the supervisor only decides when
//! to run it again, or whether to give up.
//!
//! A task is a closure that returns a new future per run (not an async
//! closure: the service's future must stay `Send`, for `tokio::spawn`);
//! state kept across runs lives in the caller, behind a lock.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::Level;

use crate::error::Result;
use crate::push::backoff_after;

/// What a run of a supervised task asks for next.
pub enum Next<T> {
    /// Finished: supervision ends with this value.
    Done(T),
    /// A round went well: run again after this pause (and start the backoff
    /// over).
    Again(Duration),
}

/// The longest wait between runs after failures.
#[derive(Debug, Clone, Copy)]
pub enum Cap {
    /// As the error's policy says ([`crate::error::Retry::cap`]).
    ByKind,
    /// The same for every error.
    Fixed(Duration),
}

/// Which failures end supervision (a stop request always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Retry every failure until stopped.
    Never,
    /// Return a failure that no retry fixes (start-up, the instance lock).
    OnDefinite,
}

/// How a supervised task is restarted.
pub struct Restart<'a> {
    /// The first delay of the backoff.
    pub base: Duration,
    pub cap: Cap,
    /// The shortest wait after any failure.
    pub floor: Duration,
    pub give_up: GiveUp,
    /// The line logged before each wait after a failure, with the error and
    /// the delay (`retry_in_ms`); `None` when the task logs for itself.
    pub log: Option<(Level, &'static str)>,
    /// Also ends a wait (e.g. POST /sync).
    pub wake: Option<&'a Notify>,
}

/// Runs `task` until it is done, the service stops, or it fails in a way
/// `restart` gives up on. Returns the task's value, `None` when stopped,
/// or the error it gave up on (also the last error when a stop came while
/// it was failing).
pub async fn supervise<T, F>(
    name: &'static str,
    restart: Restart<'_>,
    stop: &watch::Receiver<bool>,
    mut task: impl FnMut() -> F,
) -> Result<Option<T>>
where
    F: Future<Output = Result<Next<T>>>,
{
    let mut stop = stop.clone();
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        let pause = match task().await {
            Ok(Next::Done(v)) => return Ok(Some(v)),
            Ok(Next::Again(pause)) => {
                attempt = 0;
                pause
            }
            Err(e) => {
                if *stop.borrow() || (restart.give_up == GiveUp::OnDefinite && !e.is_transient()) {
                    return Err(e);
                }
                let cap = match restart.cap {
                    Cap::ByKind => e.policy().retry.cap(),
                    Cap::Fixed(cap) => cap,
                };
                let wait = backoff_after(restart.base, attempt, cap, e.retry_after).max(restart.floor);
                attempt = attempt.saturating_add(1);
                let retry_in_ms = wait.as_millis() as u64;
                match restart.log {
                    Some((level, what)) if level == Level::ERROR => tracing::error!(error = %e, retry_in_ms, "{what}"),
                    Some((_, what)) => tracing::warn!(error = %e, retry_in_ms, "{what}"),
                    None => {}
                }
                tracing::debug!(task = name, kind = ?e.kind, attempt, retry_in_ms, "task will run again");
                wait
            }
        };
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
            _ = async { restart.wake.expect("checked").notified().await }, if restart.wake.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::error::{ErrorKind, SyncError};

    fn quick(give_up: GiveUp) -> Restart<'static> {
        Restart {
            base: Duration::from_millis(1),
            cap: Cap::Fixed(Duration::from_millis(5)),
            floor: Duration::ZERO,
            give_up,
            log: None,
            wake: None,
        }
    }

    #[tokio::test]
    async fn a_failing_task_runs_again_until_it_is_done() {
        let (_tx, stop) = watch::channel(false);
        let runs = &AtomicU32::new(0);
        let r = supervise("t", quick(GiveUp::Never), &stop, || async move {
            if runs.fetch_add(1, Ordering::Relaxed) < 3 { Err(SyncError::new(ErrorKind::Auth, "no")) } else { Ok(Next::Done(7)) }
        })
        .await;
        assert_eq!(r.unwrap(), Some(7));
        assert_eq!(runs.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_definite_failure_ends_supervision_that_gives_up_on_it() {
        let (_tx, stop) = watch::channel(false);
        let runs = &AtomicU32::new(0);
        let r: Result<Option<()>> = supervise("t", quick(GiveUp::OnDefinite), &stop, || async move {
            let n = runs.fetch_add(1, Ordering::Relaxed);
            Err(if n < 2 {
                SyncError::new(ErrorKind::LocalUnreachable, "restarting")
            } else {
                SyncError::new(ErrorKind::SecondInstance, "another one runs")
            })
        })
        .await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::SecondInstance);
        assert_eq!(runs.load(Ordering::Relaxed), 3, "the transient failures were retried first");
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait_between_runs_at_once() {
        let (tx, stop) = watch::channel(false);
        let restart = Restart { cap: Cap::Fixed(Duration::from_secs(3600)), floor: Duration::from_secs(3600), ..quick(GiveUp::Never) };
        let started = Instant::now();
        let (r, ()) = tokio::join!(
            supervise("t", restart, &stop, || async { Err::<Next<()>, _>(SyncError::new(ErrorKind::UpstreamUnreachable, "down")) }),
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send(true).unwrap();
            }
        );
        assert!(started.elapsed() < Duration::from_secs(10), "the stop did not end the wait");
        assert!(r.is_ok(), "a stop during a wait is not a failure");
    }

    #[tokio::test]
    async fn a_failure_while_stopping_is_returned_to_the_caller() {
        let (tx, stop) = watch::channel(false);
        let tx = &tx;
        let r: Result<Option<()>> = supervise("t", quick(GiveUp::Never), &stop, || async move {
            tx.send(true).unwrap();
            Err(SyncError::new(ErrorKind::LocalUnreachable, "gone"))
        })
        .await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::LocalUnreachable);
    }

    #[tokio::test]
    async fn a_wake_ends_the_pause_between_rounds() {
        let (_tx, stop) = watch::channel(false);
        let wake = Notify::new();
        let runs = &AtomicU32::new(0);
        let restart = Restart { wake: Some(&wake), ..quick(GiveUp::Never) };
        let both = async {
            tokio::join!(
                supervise("t", restart, &stop, || async move {
                    if runs.fetch_add(1, Ordering::Relaxed) == 0 { Ok(Next::Again(Duration::from_secs(3600))) } else { Ok(Next::Done(())) }
                }),
                async {
                    while runs.load(Ordering::Relaxed) < 2 {
                        wake.notify_waiters();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            )
        };
        let (r, ()) = tokio::time::timeout(Duration::from_secs(10), both).await.expect("the wake did not end the pause");
        assert_eq!(r.unwrap(), Some(()));
    }

    #[tokio::test]
    async fn nothing_runs_once_a_stop_was_requested() {
        let (tx, stop) = watch::channel(false);
        tx.send(true).unwrap();
        let r = supervise("t", quick(GiveUp::Never), &stop, || async { panic!("ran after a stop") as Result<Next<()>> }).await;
        assert_eq!(r.unwrap(), None);
    }
}

//! Which tests run next to which, now that they all share one process.
//!
//! The integration tests are one binary, and the machine that runs them may
//! have two cores. libtest runs one test per core at a time, as every former
//! per-area binary did, so no more tests run at once than before and most
//! tests need nothing from this module. One test was alone in its own binary
//! and loads every core by itself: the end-to-end benchmark's quick profile
//! (two clusters, the service, pgbench). It keeps running alone by calling
//! [`alone`] first: that waits until no other test is using a PostgreSQL
//! cluster, and until the returned guard drops, a test that reaches for a
//! cluster waits.
//!
//! How a test is counted: libtest runs each test on a thread of its own,
//! named after the test. The first time that thread reaches
//! [`Cluster::shared`](super::Cluster::shared) or
//! [`Cluster::start`](super::Cluster::start), it takes a seat ([`join`]),
//! which it keeps until the thread ends (a thread-local destructor gives it
//! back, whether the test passed or panicked). Tokio's worker and blocking
//! threads never take a seat (their test's own thread has one), so a test
//! never waits for itself, and a thread never takes two seats. Tests that never touch a
//! cluster (codec property tests, file checks) are light and never wait.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

struct Floor {
    /// Test threads holding a seat.
    seated: usize,
    /// Tests waiting in [`alone`]; new seats wait while there are any, so
    /// the lone test is not starved by tests that keep starting.
    waiting_alone: usize,
    /// A test is running alone.
    alone: bool,
}

static FLOOR: Mutex<Floor> = Mutex::new(Floor { seated: 0, waiting_alone: 0, alone: false });
static CHANGED: Condvar = Condvar::new();

fn floor() -> MutexGuard<'static, Floor> {
    // A panic never happens while the lock is held; recover anyway so one
    // failed test cannot fail every other.
    FLOOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum Seat {
    Shared,
    Alone,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut f = floor();
        match self {
            Seat::Shared => f.seated -= 1,
            Seat::Alone => f.alone = false,
        }
        drop(f);
        CHANGED.notify_all();
    }
}

thread_local! {
    static SEAT: RefCell<Option<Seat>> = const { RefCell::new(None) };
}

/// With `PG_TEST_VERBOSE` set, says who waited how long (shown with
/// `--nocapture`).
fn trace(what: &str, since: Instant) {
    if std::env::var_os("PG_TEST_VERBOSE").is_some() {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        eprintln!("[test floor] {name} {what} {:.1?}", since.elapsed());
    }
}

/// A test's own thread: libtest names it after the test, which here always
/// has a module path (`up_path::...`, every test lives in a module of
/// tests/it), unlike the main thread, tokio's worker and blocking threads
/// (`tokio-rt-worker`) or a benchmark binary's threads.
fn is_test_thread() -> bool {
    matches!(std::thread::current().name(), Some(n) if n.contains("::"))
}

/// Takes a seat for the calling test, waiting while a test runs alone.
/// Does nothing if this thread has a seat already or is not a test's own
/// thread. Called by the cluster entry points.
pub(crate) fn join() {
    if !is_test_thread() {
        return;
    }
    SEAT.with(|seat| {
        if seat.borrow().is_some() {
            return;
        }
        let asked = Instant::now();
        let mut waited = false;
        let mut f = floor();
        while f.alone || f.waiting_alone > 0 {
            waited = true;
            f = CHANGED.wait(f).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        f.seated += 1;
        drop(f);
        *seat.borrow_mut() = Some(Seat::Shared);
        if waited {
            trace("waited for a test running alone", asked);
        }
    });
}

/// Runs the calling test alone among the cluster-using tests until the
/// returned guard drops: waits for every seated test to finish, and keeps
/// new ones waiting. Call it first thing in the test.
#[must_use = "the test runs alone only while the guard lives"]
pub fn alone() -> Alone {
    assert!(is_test_thread(), "floor::alone() must be called from the test's own thread");
    SEAT.with(|seat| {
        assert!(seat.borrow().is_none(), "floor::alone() must come before the test touches a cluster");
        let asked = Instant::now();
        let mut f = floor();
        f.waiting_alone += 1;
        while f.alone || f.seated > 0 {
            f = CHANGED.wait(f).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        f.waiting_alone -= 1;
        f.alone = true;
        drop(f);
        *seat.borrow_mut() = Some(Seat::Alone);
        trace("runs alone, after waiting for the others", asked);
    });
    Alone { _not_send: std::marker::PhantomData }
}

/// See [`alone`]. Gives the floor back when dropped.
pub struct Alone {
    /// The seat lives in this thread's storage: the guard must stay here.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Alone {
    fn drop(&mut self) {
        SEAT.with(|seat| seat.borrow_mut().take());
    }
}

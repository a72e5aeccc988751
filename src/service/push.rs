//! The push task: delivers the journal upstream ([`crate::push`]) batch
//! by batch, for as long as the service runs, and for `once` until the
//! journal is empty.
//!
//! It waits while upstream is offline or the slot is unusable, wakes when
//! capture journals something, retries a failed batch with backoff (the
//! failure is recorded on the batch's journal rows and, first in a streak,
//! in `_sync_log`), and writes `_sync_log` rows per table for finished
//! cycles: a cycle ends when the queue is drained, and the cycles that end
//! within one `interval_seconds` share one row per table (their rows summed,
//! their duration from the first batch to the last drain), written when the
//! interval is over or the pusher stops. Streaming, the queue drains after
//! almost every batch: one row per table per batch was one clinic-database
//! commit per batch, and a log whose last 20 rows cover a second. A lost
//! local connection ends it so its supervisor opens a new one. While the
//! batch size is reduced ([`push::Sizer`]) it says so in `_sync_state`
//! ([`push::BATCH_NOTE`]), for `status`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::runtime::Runtime;
use super::supervise::{Cap, GiveUp, Next, Restart, supervise};
use crate::config::{connect_journal, connect_local};
use crate::error::{ErrorKind, JOURNAL, LOCAL, Result, SyncError, TRANSIENT_CAP};
use crate::push;
use crate::store::{Direction, JournalStore, LogEntry, Store};
use crate::upstream;

/// The push task of `run`: [`push_while`] under supervision.
pub(crate) async fn task(rt: &Runtime, up: &upstream::Client, stop: &watch::Receiver<bool>) {
    let restart = Restart {
        base: rt.retry_base(),
        cap: Cap::Fixed(TRANSIENT_CAP),
        floor: Duration::ZERO,
        give_up: GiveUp::Never,
        log: None,
        wake: None,
    };
    let _ = supervise("push", restart, stop, || async move {
        match push_while(rt, up, stop.clone(), false).await {
            Ok(_) => Ok(Next::Done(())),
            Err(e) => {
                if e.is_outage() {
                    rt.local_link.report_down(&e);
                }
                tracing::error!(error = %e, "pusher failed");
                Err(e)
            }
        }
    })
    .await;
}

/// Pushes journal rows. With `give_up` (for `once`): drains to empty after
/// `done` turns true and returns the error after `retry_max_attempts`
/// consecutive failures. Without it (for `run`): waits while upstream is
/// offline or the slot is unhealthy, retries forever with backoff.
pub(crate) async fn push_while(
    rt: &Runtime,
    up: &upstream::Client,
    mut done: watch::Receiver<bool>,
    give_up: bool,
) -> Result<push::DrainReport> {
    let cfg = &rt.cfg;
    let local = connect_local(cfg).await?;
    let journal = connect_journal(cfg).await?;
    // A note a previous pusher left describes a size this one has not learnt.
    let _ = Store::new(&local, LOCAL).set_note(push::BATCH_NOTE, None).await;
    let streak = rt.alerter.streak("push");
    let mut total = push::DrainReport::default();
    let started = Instant::now();
    let mut failures = 0u32;
    let base = Duration::from_secs(cfg.sync.retry_delay_seconds);
    let mut cycle: HashMap<String, i64> = HashMap::new();
    let mut cycle_started = Instant::now();
    let mut drained_at = cycle_started;
    let log_every = Duration::from_secs(cfg.sync.interval_seconds);
    let mut sizer = push::Sizer::new(cfg.sync.batch_size);
    let scope = crate::scope::UpFilter::load(cfg, &local).await?;
    loop {
        if !give_up {
            rt.upstream_link.wait_online(&mut done).await;
            let mut slot = rt.slot_ok.subscribe();
            while !*slot.borrow_and_update() && !*done.borrow() {
                tokio::select! {
                    _ = slot.changed() => {}
                    _ = done.changed() => {}
                }
            }
            if *done.borrow() {
                break;
            }
        }
        // A restarted local database leaves this connection dead: let the
        // caller open a new one (it is not an upstream outage).
        if local.is_closed() || journal.is_closed() {
            return Err(SyncError::new(ErrorKind::LocalUnreachable, "local database (pusher): connection closed"));
        }
        // Read before the fetch: an empty queue only means "done" if capture
        // had already passed its target when the queue was read.
        let finishing = *done.borrow();
        let pusher = push::Pusher {
            local: &local,
            journal: &journal,
            upstream: up,
            schema: cfg.upstream_schema(),
            max_attempts: cfg.sync.retry_max_attempts,
            scope: scope.as_ref(),
        };
        let result = push::push_batch(&pusher, &mut sizer).await;
        if let Some(note) = sizer.take_note_change() {
            match &note {
                Some(n) => tracing::warn!(limit = sizer.limit(), "{n}"),
                None => tracing::info!(batch_size = cfg.sync.batch_size, "batch size back to the configured size"),
            }
            let _ = Store::new(&local, LOCAL).set_note(push::BATCH_NOTE, note.as_deref()).await;
        }
        match result {
            Ok(r) if r.rows == 0 => {
                // The queue is drained: a cycle ends. Cycles within one
                // interval share their `_sync_log` rows (see the header).
                if !cycle.is_empty() {
                    drained_at = Instant::now();
                    if finishing || cycle_started.elapsed() >= log_every {
                        log_cycle(&local, Direction::Up, &cycle, drained_at - cycle_started).await;
                        cycle.clear();
                    }
                }
                if finishing {
                    break;
                }
                let log_due = (!cycle.is_empty()).then(|| cycle_started + log_every);
                tokio::select! {
                    _ = rt.journaled.notified() => {}
                    _ = rt.sync_now.notified() => {}
                    _ = done.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = async { tokio::time::sleep_until(log_due.expect("guarded").into()).await }, if log_due.is_some() => {}
                }
            }
            Ok(r) => {
                if failures > 0 || cycle.is_empty() {
                    cycle_started = Instant::now();
                }
                failures = 0;
                streak.succeeded().await;
                rt.upstream_link.report_ok();
                total.rows += r.rows;
                total.applied += r.applied;
                total.kept += r.kept;
                total.rejected += r.rejected;
                total.batches += 1;
                rt.pushed_total.fetch_add(r.rows as u64, Ordering::Relaxed);
                // Rows moved to other branches, now upstream and noted in the journal: the down task removes them here.
                if r.moved_away > 0 {
                    rt.sync_now.notify_waiters();
                }
                for (t, n) in r.per_table {
                    *cycle.entry(t).or_default() += n;
                }
                if r.should_back_off {
                    tokio::time::sleep(push::backoff(base, 0, Duration::from_secs(60))).await;
                }
            }
            Err(f) => {
                if local.is_closed() || journal.is_closed() {
                    return Err(f.error);
                }
                failures += 1;
                if f.error.is_outage() && f.error.kind != ErrorKind::LocalUnreachable {
                    rt.upstream_link.report_down(&f.error);
                } else {
                    tracing::warn!(error = %f.error, attempt = failures, "push failed");
                }
                streak.failed(&f.error).await;
                if !f.ids.is_empty() {
                    let _ = JournalStore::new(&journal, JOURNAL).record_failure(&f.ids, &f.error.to_string(), false).await;
                }
                if failures == 1 {
                    log_error(&local, Direction::Up, &f.error).await;
                }
                if give_up && (failures >= cfg.sync.retry_max_attempts || !f.error.is_transient()) {
                    return Err(f.error);
                }
                let cap = f.error.policy().retry.cap();
                tokio::select! {
                    _ = tokio::time::sleep(push::backoff_after(base, failures - 1, cap, f.error.retry_after)) => {}
                    _ = done.changed(), if !give_up => {}
                }
                if !give_up && *done.borrow() {
                    break;
                }
            }
        }
    }
    // Stopping: the cycles not logged yet.
    if !cycle.is_empty() {
        log_cycle(&local, Direction::Up, &cycle, drained_at.max(cycle_started) - cycle_started).await;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One `_sync_log` row per table for the cycles of one interval, in one
/// statement.
async fn log_cycle(local: &tokio_postgres::Client, direction: Direction, per_table: &HashMap<String, i64>, took: Duration) {
    let mut entries = Vec::with_capacity(per_table.len());
    for (table, n) in per_table {
        tracing::info!(table = %table, direction = direction.as_str(), rows = n, duration_ms = took.as_millis() as u64, "sync");
        entries.push(LogEntry { direction, table: Some(table), records: *n as i32, error: None, duration_ms: took.as_millis() as i32 });
    }
    let _ = Store::new(local, LOCAL).log_sync_all(&entries).await;
}

/// The `_sync_log` error row for the first failure of a streak.
async fn log_error(local: &tokio_postgres::Client, direction: Direction, e: &SyncError) {
    let text = e.to_string();
    let entry = LogEntry { direction, table: None, records: 0, error: Some(&text), duration_ms: 0 };
    let _ = Store::new(local, LOCAL).log_sync(&entry).await;
}

//! "Is it in sync?": one snapshot of the sync state, read from the local
//! database, shared by `status`, the HTTP `/status` and `/metrics`.

use serde::Serialize;

use crate::config::{Config, LocalDbs};
use crate::error::{JOURNAL, Result, SyncError};
use crate::store::{JournalStore, Store};

const LOCAL: crate::error::At = crate::error::At::local("local database");

#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub last_sync_down: Option<String>,
    pub last_sync_up: Option<String>,
    pub records_synced_down: i64,
    pub records_synced_up: i64,
    pub pending: i64,
    pub parked: i64,
    pub last_error: Option<String>,
    /// Upstream rows the local table rejected, parked by the down path.
    pub parked_down: i64,
    /// The error of the first of them, and its key.
    pub parked_down_error: Option<String>,
    pub parked_down_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the slot holds back, in bytes (from its restart LSN).
    pub retained_bytes: Option<i64>,
    /// How far its confirmed position is behind the current WAL, in bytes.
    pub lag_bytes: Option<i64>,
    pub wal_status: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LinkStatus {
    pub online: bool,
    pub since: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// This clinic's writer id upstream (`[sync] clinic_id`).
    pub clinic_id: String,
    /// Conflicts in the upstream conflict log (within its retention), when
    /// the caller asked upstream (`status` does; the HTTP endpoint reads
    /// only the local database).
    pub conflicts: Option<i64>,
    pub tables: Vec<TableStatus>,
    pub backlog: i64,
    pub parked: i64,
    /// Upstream rows parked by the down path, all tables.
    pub parked_down: i64,
    pub oldest_pending_seconds: Option<f64>,
    pub slot: Option<SlotStatus>,
    /// Commit LSN of the last journaled transaction: note it before an
    /// upstream restore (`replay --from-lsn`).
    pub journaled_lsn: Option<String>,
    /// Oldest LSN the journal can still replay from.
    pub oldest_replayable_lsn: Option<String>,
    /// As last recorded by the running service (None if it never ran).
    pub upstream: Option<LinkStatus>,
    pub alerts: Vec<String>,
    /// The pusher's batch size while reduced, and why ("batch size reduced
    /// to N after statement timeout"), with since when.
    pub push_note: Option<String>,
    /// The study-files queue (`[storage]`; None without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::store::files::FilesSummary>,
}

pub async fn gather(cfg: &Config, dbs: &LocalDbs) -> Result<Status> {
    let local = &dbs.local;
    let store = Store::new(local, LOCAL);
    let jstore = JournalStore::new(&dbs.journal, JOURNAL);
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let queue = jstore.queue_counts().await?;
    let journal = queue.summary;
    let progress = store.table_progress(&cfg.sync.tables, &queue).await?;
    let down_parked = store.down_parked_summary(&cfg.sync.tables).await?;
    let tables: Vec<TableStatus> = progress
        .into_iter()
        .zip(down_parked)
        .map(|(t, d)| TableStatus {
            table: t.table,
            last_sync_down: t.last_sync_down,
            last_sync_up: t.last_sync_up,
            records_synced_down: t.records_synced_down,
            records_synced_up: t.records_synced_up,
            last_error: t.last_error,
            pending: t.pending,
            parked: t.parked,
            parked_down: d.count,
            parked_down_error: d.first_error,
            parked_down_key: d.first_record_id,
        })
        .collect();
    let parked_down = tables.iter().map(|t| t.parked_down).sum();
    let slot = local
        .query_opt(
            "SELECT slot_name::text, active, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::int8,
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, wal_status
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.sync.slot_name],
        )
        .await
        .map_err(q)?
        .map(|r| SlotStatus {
            name: r.get(0),
            active: r.get(1),
            confirmed_flush_lsn: r.get(2),
            retained_bytes: r.get(3),
            lag_bytes: r.get(4),
            wal_status: r.get(5),
        });
    let (journaled_lsn, oldest_replayable_lsn) = jstore.journal_positions(&cfg.sync.slot_name).await?;
    let mut upstream = None;
    let mut alerts = Vec::new();
    let mut push_note = None;
    for e in store.service_state().await? {
        if e.key == crate::push::BATCH_NOTE {
            push_note = e.value.map(|v| format!("{v}, since {}", e.since.unwrap_or_default()));
        } else if e.key == "upstream" {
            upstream = Some(LinkStatus { online: e.value.as_deref() == Some("online"), since: e.since });
        } else if let Some(a) = e.key.strip_prefix("alert:") {
            alerts.push(format!("{a} (since {})", e.since.unwrap_or_default()));
        }
    }
    Ok(Status {
        clinic_id: cfg.sync.clinic_id.clone(),
        conflicts: None,
        tables,
        backlog: journal.backlog,
        parked: journal.parked,
        parked_down,
        oldest_pending_seconds: journal.oldest_pending_seconds,
        slot,
        journaled_lsn,
        oldest_replayable_lsn,
        upstream,
        alerts,
        push_note,
        files: match cfg.storage {
            Some(_) => Some(store.files_summary().await?),
            None => None,
        },
    })
}

/// The one-screen text form.
pub fn render(cfg: &Config, st: &Status) -> String {
    let mut o = String::new();
    let w = |o: &mut String, s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    w(&mut o, format!("clinic {} ([sync] clinic_id: its writer id upstream)", st.clinic_id));
    w(&mut o, format!("{:<22} {:<27} {:<27} {:>8} {:>6}  last error", "table", "last sync down", "last sync up", "pending", "parked"));
    for t in &st.tables {
        let short = |s: &Option<String>| s.as_deref().map(|v| v.chars().take(26).collect::<String>()).unwrap_or_else(|| "never".into());
        w(
            &mut o,
            format!(
                "{:<22} {:<27} {:<27} {:>8} {:>6}  {}",
                t.table,
                short(&t.last_sync_down),
                short(&t.last_sync_up),
                t.pending,
                t.parked,
                t.last_error.as_deref().unwrap_or("").chars().take(80).collect::<String>()
            ),
        );
    }
    o.push('\n');
    w(
        &mut o,
        format!(
            "journal: {} pending, {} parked, oldest pending {}",
            st.backlog,
            st.parked,
            st.oldest_pending_seconds
                .map_or("-".to_string(), |s| crate::connectivity::human(std::time::Duration::from_secs_f64(s.max(0.0))) + " ago")
        ),
    );
    for t in st.tables.iter().filter(|t| t.parked_down > 0) {
        w(
            &mut o,
            format!(
                "down: {} upstream row(s) of {} parked, rejected by the local table (retried every cycle); first, {}: {}",
                t.parked_down,
                t.table,
                t.parked_down_key.as_deref().unwrap_or("-"),
                t.parked_down_error.as_deref().unwrap_or("").chars().take(200).collect::<String>()
            ),
        );
    }
    match &st.slot {
        Some(s) => w(
            &mut o,
            format!(
                "slot {}: {}, confirmed {}, lag {} bytes, retains {} bytes, wal_status {}",
                s.name,
                if s.active { "streaming" } else { "not streaming" },
                s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                s.lag_bytes.map_or("-".into(), |b| b.to_string()),
                s.retained_bytes.map_or("-".into(), |b| b.to_string()),
                s.wal_status.as_deref().unwrap_or("-")
            ),
        ),
        None => w(&mut o, format!("slot {}: MISSING — run `centrovision-sync resync`", cfg.sync.slot_name)),
    }
    match &st.upstream {
        Some(l) if l.online => w(&mut o, format!("upstream: online (since {})", l.since.as_deref().unwrap_or("-"))),
        Some(l) => w(&mut o, format!("upstream: OFFLINE since {}", l.since.as_deref().unwrap_or("-"))),
        None => w(&mut o, "upstream: unknown (the service has not run yet)".into()),
    }
    if let Some(n) = st.conflicts {
        w(&mut o, format!("conflicts decided upstream: {n}{}", if n > 0 { " (see `centrovision-sync conflicts`)" } else { "" }));
    }
    if let Some(l) = &st.journaled_lsn {
        w(
            &mut o,
            format!(
                "journaled through LSN {l}; replayable from {} (note these before restoring upstream)",
                st.oldest_replayable_lsn.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(f) = &st.files {
        w(
            &mut o,
            format!(
                "study files: {} waiting to move ({} MB){}{}{}",
                f.pending,
                f.pending_bytes / (1024 * 1024),
                f.oldest_waiting_seconds.map_or(String::new(), |s| format!(
                    ", oldest waiting {}",
                    crate::connectivity::human(std::time::Duration::from_secs(s.max(0) as u64))
                )),
                match (&f.first_error, f.failed) {
                    (Some(e), n) if n > 0 => format!(", {n} failed (first: {e})"),
                    (_, n) if n > 0 => format!(", {n} failed (see the log)"),
                    _ => String::new(),
                },
                if f.conflicts > 0 { format!(", {} conflict(s), each loser kept beside its file", f.conflicts) } else { String::new() }
            ),
        );
    }
    if let Some(n) = &st.push_note {
        w(&mut o, format!("push: {n}"));
    }
    if !st.alerts.is_empty() {
        w(&mut o, format!("ALERTS: {}", st.alerts.join("; ")));
    }
    let in_sync = st.backlog == 0
        && st.parked == 0
        && st.parked_down == 0
        && st.alerts.is_empty()
        && st.slot.as_ref().is_some_and(|s| s.wal_status.as_deref() != Some("lost"));
    w(&mut o, if in_sync { "in sync: yes".into() } else { "in sync: NO (see above)".to_string() });
    o
}

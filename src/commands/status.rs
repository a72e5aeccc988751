//! `status`: answers "is it in sync?" from the local database alone.

use serde::Serialize;

use crate::config::Config;
use crate::error::{Result, SyncError};
use crate::replication::connect_local;

const LOCAL: &str = "local database";

#[derive(Serialize)]
struct TableStatus {
    table: String,
    last_sync_down: Option<String>,
    last_sync_up: Option<String>,
    pending: i64,
    parked: i64,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct Status {
    tables: Vec<TableStatus>,
    backlog: i64,
    parked: i64,
    oldest_pending_seconds: Option<f64>,
    slot: Option<SlotStatus>,
    /// The LSN to note before an upstream restore (`replay --from-lsn`).
    journaled_lsn: Option<String>,
}

#[derive(Serialize)]
struct SlotStatus {
    name: String,
    active: bool,
    confirmed_flush_lsn: Option<String>,
    lag_bytes: Option<i64>,
    wal_status: Option<String>,
}

pub async fn status(cfg: &Config, json: bool) -> Result<()> {
    let local = connect_local(cfg).await?;
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let rows = local
        .query(
            "SELECT t.name,
                    m.last_sync_from_supabase::text, m.last_sync_to_supabase::text, m.last_error,
                    (SELECT count(*) FROM _sync_pending p WHERE p.table_name = t.name AND NOT p.synced AND p.parked_at IS NULL),
                    (SELECT count(*) FROM _sync_pending p WHERE p.table_name = t.name AND NOT p.synced AND p.parked_at IS NOT NULL)
             FROM unnest($1::text[]) WITH ORDINALITY t(name, n)
             LEFT JOIN _sync_metadata m ON m.table_name = t.name
             ORDER BY t.n",
            &[&cfg.sync.tables],
        )
        .await
        .map_err(q)?;
    let tables: Vec<TableStatus> = rows
        .iter()
        .map(|r| TableStatus {
            table: r.get(0),
            last_sync_down: r.get(1),
            last_sync_up: r.get(2),
            last_error: r.get(3),
            pending: r.get(4),
            parked: r.get(5),
        })
        .collect();
    let agg = local
        .query_one(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL),
                    count(*) FILTER (WHERE parked_at IS NOT NULL),
                    extract(epoch FROM now() - min(coalesce(commit_ts, created_at)) FILTER (WHERE parked_at IS NULL))::float8
             FROM _sync_pending WHERE NOT synced",
            &[],
        )
        .await
        .map_err(q)?;
    let slot = local
        .query_opt(
            "SELECT slot_name::text, active, confirmed_flush_lsn::text,
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
            lag_bytes: r.get(3),
            wal_status: r.get(4),
        });
    let journaled_lsn: Option<String> = local
        .query_opt("SELECT journaled_lsn::text FROM _sync_capture WHERE slot_name = $1", &[&cfg.sync.slot_name])
        .await
        .map_err(q)?
        .map(|r| r.get(0));
    let st = Status {
        tables,
        backlog: agg.get(0),
        parked: agg.get(1),
        oldest_pending_seconds: agg.get(2),
        slot,
        journaled_lsn,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st).expect("serializable"));
        return Ok(());
    }
    println!("{:<24} {:<32} {:<32} {:>8} {:>7}  last error", "table", "last sync down", "last sync up", "pending", "parked");
    for t in &st.tables {
        println!(
            "{:<24} {:<32} {:<32} {:>8} {:>7}  {}",
            t.table,
            t.last_sync_down.as_deref().unwrap_or("never"),
            t.last_sync_up.as_deref().unwrap_or("never"),
            t.pending,
            t.parked,
            t.last_error.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "journal backlog: {} pending, {} parked, oldest pending {}",
        st.backlog,
        st.parked,
        st.oldest_pending_seconds.map_or("-".to_string(), |s| format!("{s:.0} s ago"))
    );
    match &st.slot {
        Some(s) => println!(
            "slot {}: {}, confirmed {}, lag {} bytes, wal_status {}",
            s.name,
            if s.active { "active" } else { "inactive" },
            s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            s.lag_bytes.map_or("-".into(), |b| b.to_string()),
            s.wal_status.as_deref().unwrap_or("-")
        ),
        None => println!("slot {}: MISSING (run `centrovision-sync init`, or `resync` if it was lost)", cfg.sync.slot_name),
    }
    if let Some(l) = &st.journaled_lsn {
        println!("journaled through LSN {l} (note it before restoring upstream; replay --from-lsn)");
    }
    Ok(())
}

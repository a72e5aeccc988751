//! Chaos: a randomized two-way workload while faults hit every moving part,
//! then proof that no data was lost.
//!
//! Each run starts two dedicated clusters (local and upstream, so both can be
//! crashed), the real `centrovision-sync run` pointed at upstream through an
//! in-process TCP proxy (`support::proxy`), and a workload that writes on
//! both sides the way the clinic app and other clinics do (inserts, updates,
//! soft deletes, undeletes, local hard deletes, >8 kB TOASTed notes, updates
//! that leave the TOASTed notes untouched, multi-statement transactions,
//! the same rows from both sides; timestamps from `now()` via the tables'
//! triggers). Meanwhile, faults at random:
//!
//! - SIGKILL of the service, then a new `run`;
//! - immediate-mode restart of the local cluster (or SIGKILL of its
//!   postmaster), of the upstream cluster;
//! - the network between service and upstream: delay, blackhole, reset,
//!   half-open in either direction (see `support/proxy.rs`);
//! - REST mode only, HTTP faults at the PostgREST stand-in: 429 with
//!   Retry-After, 503, dropped connections, slow answers, a 200 that is not
//!   JSON.
//!
//! Then everything heals, the service is stopped with SIGTERM, one `once`
//! runs (retried a few times if it fails right after the faults), and the
//! test checks:
//!
//! 1. every synced table is identical on both sides;
//! 2. every row the workload wrote equals the image of its latest committed
//!    write (read back inside that transaction), or is absent when the
//!    latest write was a hard delete; rows never written are absent;
//! 3. the journal holds no duplicate change (`(commit_lsn, ordinal)`), no
//!    transaction under two commit LSNs, exactly as many rows for each
//!    committed local transaction as that transaction changed rows, and
//!    nothing from a transaction the workload did not commit locally (an
//!    echo of a down-path write would show up here);
//! 4. nothing is parked or left unsynced;
//! 5. `run` stopped within 60 s of SIGTERM.
//!
//! The workload is sequential (one transaction at a time, on one side or the
//! other), so commit order is the order of `updated_at` (= `now()` at
//! transaction start) and of delete commit timestamps: "latest write" is
//! simply the last one committed. A transaction cut off by a restart is run
//! again after reconnecting (up to 5 times); a COMMIT whose answer is lost
//! is resolved with `txid_status()` first, and only committed transactions
//! are recorded.
//!
//! Reproducibility: the seed fixes every random decision (workload
//! operations and values, fault kinds, durations and pacing); thread timing
//! still decides how they interleave with the service, so a seed reproduces
//! the scenario, not the exact schedule. On failure the whole history (seed,
//! every committed write with its images and `clock_timestamp()`, every fault
//! with start/heal times, proxy counters) is written as JSON lines to
//! `$CARGO_TARGET_TMPDIR/chaos-history-<mode>-<seed>.jsonl` (next to it, the
//! service log), and the path is printed.
//!
//! Both modes run every time (`chaos::postgres` and `chaos::rest`, same
//! seed when `CHAOS_SEED` is set): the two transports fail differently
//! (a broken PostgreSQL session vs. HTTP retries, keep-alive pools and
//! rate limits), and a fault class only one mode has would otherwise be
//! exercised only every other run.
//!
//! Knobs: `CHAOS_SEED` (default: random, always printed), `CHAOS_FAULTS`
//! (default 30, the CI variant, about a minute per mode in debug),
//! `CHAOS_KEEP_HISTORY=1` (write the history even on success),
//! `CHAOS_WORKAROUNDS=0` (do not step around the known bugs listed in
//! [`WORKAROUNDS`]).
//!
//! Long variant (run before releases; about 10 minutes on 2 cores):
//!
//! ```text
//! CHAOS_FAULTS=300 cargo test --release --test it chaos:: -- --nocapture
//! ```
//!
//! The end of the file holds deterministic regression tests for the bugs
//! chaos found (marked `#[ignore = "bug: ..."]` until src/ is fixed), plus a
//! half-open-connection liveness test.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::postgrest::Fault;
use support::proxy::{Direction, NetFault, Proxy};
use support::sync::{Mode, Pair, Running, TABLES, kill9, tail};
use support::{Cluster, ClusterOptions, StopMode, TestDb};
use tokio::sync::watch;
use tokio_postgres::Client;

/// Known src bugs the chaos run steps around until they are fixed, each with
/// its own (ignored) deterministic test below. `CHAOS_WORKAROUNDS=0` runs
/// without them. Remove an entry when its bug is fixed.
///
/// (None today: the bugs the first chaos runs found — TOAST fill from the
/// journal, `once` racing its own marker — are fixed, and their
/// deterministic tests below run by default.)
const WORKAROUNDS: &[Workaround] = &[];

#[derive(Debug)]
#[allow(dead_code, reason = "kept for the next bug chaos finds")]
enum Workaround {
    /// Run this on the local database before `init`.
    Sql { bug: &'static str, sql: &'static str },
    /// Run `once` again while the previous one left journal rows unsynced.
    OnceAgain { bug: &'static str },
}

impl Workaround {
    fn bug(&self) -> &'static str {
        match self {
            Workaround::Sql { bug, .. } | Workaround::OnceAgain { bug } => bug,
        }
    }
}

fn workarounds() -> &'static [Workaround] {
    match std::env::var("CHAOS_WORKAROUNDS") {
        Ok(v) if v == "0" => &[],
        _ => WORKAROUNDS,
    }
}

/// The tables the workload writes (all of `TABLES` are synced and checked).
const WRITTEN: [&str; 4] = ["branches", "services", "patients", "appointments"];
/// Rows per written table: few, so both sides keep hitting the same rows.
const POOL: [usize; 4] = [6, 10, 14, 14];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    chaos(Mode::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest() {
    chaos(Mode::Rest).await
}

// ---------------------------------------------------------------------------
// Run parameters, history
// ---------------------------------------------------------------------------

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().expect("CHAOS_SEED must be a u64"),
        _ => rand::random(),
    }
}

fn fault_count() -> usize {
    match std::env::var("CHAOS_FAULTS") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().expect("CHAOS_FAULTS must be a number"),
        _ => 30,
    }
}

/// Printed past the test harness's output capture (it only captures the
/// print macros), so the seed shows even for a passing run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Everything that happened, as JSON lines.
#[derive(Clone, Default)]
struct History(Arc<Mutex<Vec<Value>>>);

impl History {
    fn push(&self, v: Value) {
        self.0.lock().unwrap().push(v);
    }
    fn write(&self, path: &PathBuf) {
        let lines: Vec<String> = self.0.lock().unwrap().iter().map(|v| v.to_string()).collect();
        std::fs::write(path, lines.join("\n") + "\n").expect("write the chaos history");
    }
}

/// Long strings (TOASTed notes) as their length and a hash, to keep the file
/// readable; equal values still compare equal.
fn abbreviate(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() > 200 => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            Value::String(format!("<{} chars, hash {:016x}, starts {:?}>", s.len(), h.finish(), &s[..24]))
        }
        Value::Array(a) => Value::Array(a.iter().map(abbreviate).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), abbreviate(v))).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
enum Side {
    Local,
    Upstream,
}

/// A connection that comes back after its server restarts.
struct Conn {
    db: TestDb,
    client: Option<Client>,
}

impl Conn {
    fn new(db: TestDb) -> Conn {
        Conn { db, client: None }
    }

    async fn get(&mut self) -> &Client {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match self.db.try_connect().await {
                    Ok(c) => {
                        if c.batch_execute("SET TimeZone = 'UTC'").await.is_ok() {
                            self.client = Some(c);
                            break;
                        }
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "workload cannot reconnect to {}: {e}", self.db.name);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.client.as_ref().unwrap()
    }

    fn lost(&mut self) {
        self.client = None;
    }
}

/// Did this error end the connection (as opposed to a statement failing)?
fn connection_lost(e: &tokio_postgres::Error, c: &Client) -> bool {
    c.is_closed()
        || match e.as_db_error() {
            None => true,
            Some(db) => matches!(&db.code().code()[..2], "08" | "57"),
        }
}

fn pool_id(table: usize, i: usize) -> String {
    format!("c4a05000-0000-4000-8000-{:06x}{:06x}", table + 1, i + 1)
}

/// One row change the workload attempts.
#[derive(Debug, Clone, serde::Serialize)]
struct Op {
    table: &'static str,
    id: String,
    kind: &'static str,
    sql: String,
}

fn pick_status(rng: &mut StdRng) -> &'static str {
    ["scheduled", "confirmed", "done", "cancelled"][rng.random_range(0..4)]
}

fn gen_op(rng: &mut StdRng, side: Side) -> Op {
    let t = rng.random_range(0..WRITTEN.len());
    let table = WRITTEN[t];
    let id = pool_id(t, rng.random_range(0..POOL[t]));
    let r: u32 = rng.random_range(0..1_000_000);
    let other = |rng: &mut StdRng, tt: usize| pool_id(tt, rng.random_range(0..POOL[tt]));
    let roll = rng.random_range(0..100);
    let hard_delete = side == Side::Local && roll >= 90;
    let (kind, sql) = if hard_delete {
        ("hard_delete", format!("DELETE FROM {table} WHERE id = '{id}'"))
    } else if roll >= 80 {
        ("soft_delete", format!("UPDATE {table} SET deleted_at = now() WHERE id = '{id}' AND deleted_at IS NULL"))
    } else if roll >= 75 {
        ("undelete", format!("UPDATE {table} SET deleted_at = NULL WHERE id = '{id}' AND deleted_at IS NOT NULL"))
    } else if roll >= 40 {
        match table {
            "branches" => ("update", format!("UPDATE branches SET address = 'Av. {r} ñ' WHERE id = '{id}'")),
            "services" => ("update", format!("UPDATE services SET price = price + {}.{:02} WHERE id = '{id}'", r % 50, r % 100)),
            "patients" => match rng.random_range(0..3) {
                // >8 kB of incompressible text: stored out of line (TOAST).
                0 => (
                    "toast_notes",
                    format!(
                        "UPDATE patients SET notes = (SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, {}) g) WHERE id = '{id}'",
                        rng.random_range(280..400)
                    ),
                ),
                // Leaves a TOASTed notes value unchanged: the WAL does not carry it.
                1 => ("phone_only", format!("UPDATE patients SET phone = '+56 9 {r}' WHERE id = '{id}'")),
                _ => (
                    "update",
                    format!(
                        "UPDATE patients SET metadata = coalesce(metadata, '{{}}') || '{{\"v\": {r}, \"s\": \"ü {r}\"}}', tags = ARRAY['u{r}', 'x y'] WHERE id = '{id}'"
                    ),
                ),
            },
            _ => ("update", format!("UPDATE appointments SET status = '{}', reason = 'motivo {r}' WHERE id = '{id}'", pick_status(rng))),
        }
    } else {
        let sql = match table {
            "branches" => format!(
                "INSERT INTO branches (id, name, address) VALUES ('{id}', 'Sucursal {r} 🦷', 'Calle {r}')
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address, deleted_at = NULL"
            ),
            "services" => format!(
                "INSERT INTO services (id, name, price) VALUES ('{id}', 'Servicio {r}', {}.{:02})
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, deleted_at = NULL",
                r % 100_000,
                r % 100
            ),
            "patients" => format!(
                "INSERT INTO patients (id, branch_id, full_name, birth_date, phone, tags, metadata, photo)
                 VALUES ('{id}', (SELECT id FROM branches WHERE id = '{b}'), 'Paciente {r} \"ñandú\"', '1950-01-01'::date + {d},
                         '{r}', ARRAY['a{r}', 'b, c', NULL], '{{\"r\": {r}, \"l\": [1, 2.50, \"x\"]}}', '\\x00ff{r:06x}'::bytea)
                 ON CONFLICT (id) DO UPDATE SET branch_id = EXCLUDED.branch_id, full_name = EXCLUDED.full_name,
                   birth_date = EXCLUDED.birth_date, phone = EXCLUDED.phone, tags = EXCLUDED.tags,
                   metadata = EXCLUDED.metadata, photo = EXCLUDED.photo, deleted_at = NULL",
                b = other(rng, 0),
                d = r % 20_000
            ),
            _ => format!(
                "INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, status, reason)
                 VALUES ('{id}', (SELECT id FROM branches WHERE id = '{b}'), (SELECT id FROM patients WHERE id = '{p}'),
                         (SELECT id FROM services WHERE id = '{s}'), '2026-03-01 08:00+00'::timestamptz + interval '{m} minutes',
                         '{st}', 'control {r}')
                 ON CONFLICT (id) DO UPDATE SET branch_id = EXCLUDED.branch_id, patient_id = EXCLUDED.patient_id,
                   service_id = EXCLUDED.service_id, starts_at = EXCLUDED.starts_at, status = EXCLUDED.status,
                   reason = EXCLUDED.reason, deleted_at = NULL",
                b = other(rng, 0),
                p = other(rng, 2),
                s = other(rng, 1),
                m = r % 50_000,
                st = pick_status(rng)
            ),
        };
        ("upsert", sql)
    };
    Op { table, id, kind, sql }
}

/// A committed transaction.
#[derive(Debug, Clone)]
struct Committed {
    seq: usize,
    side: Side,
    /// `txid_current()` (with epoch).
    xid: i64,
    /// Row changes it made (what capture must journal, for local ones).
    changes: u64,
    /// Final image of every row it touched (None: deleted).
    images: Vec<(&'static str, String, Option<Value>)>,
}

/// What the workload did, for the checks.
#[derive(Default)]
struct Outcome {
    committed: Vec<Committed>,
    attempted: usize,
    rolled_back: usize,
    /// Transactions run again after their connection was lost.
    retried: usize,
    ambiguous_committed: usize,
    ambiguous_aborted: usize,
}

/// The result of one attempted transaction.
enum TxnResult {
    Committed(Committed),
    /// Definitely not committed (a statement-level failure).
    Aborted,
    /// Not committed because the connection went away (a restart): worth
    /// running again once reconnected.
    Lost,
}

async fn run_txn(conn: &mut Conn, side: Side, ops: &[Op], seq: usize, history: &History) -> TxnResult {
    let c = conn.get().await;
    // Before COMMIT, any failure means the transaction did not commit.
    let prepared = async {
        c.batch_execute("BEGIN").await?;
        let xid: i64 = c.query_one("SELECT txid_current()", &[]).await?.get(0);
        let mut changes = 0u64;
        let mut touched: Vec<(&'static str, String)> = Vec::new();
        let mut applied = Vec::new();
        for op in ops {
            c.batch_execute("SAVEPOINT op").await?;
            match c.execute(op.sql.as_str(), &[]).await {
                Ok(n) => {
                    changes += n;
                    if n > 0 && !touched.iter().any(|(t, i)| *t == op.table && *i == op.id) {
                        touched.push((op.table, op.id.clone()));
                    }
                    applied.push(json!({"table": op.table, "id": op.id, "kind": op.kind, "rows": n}));
                }
                Err(e) if !connection_lost(&e, c) => {
                    // A data error (FK, deadlock with the down path...): this
                    // statement is undone, the transaction goes on.
                    c.batch_execute("ROLLBACK TO SAVEPOINT op").await?;
                    let code = e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
                    applied.push(json!({"table": op.table, "id": op.id, "kind": op.kind, "error": code}));
                }
                Err(e) => return Err(e),
            }
        }
        let mut images = Vec::new();
        for (t, id) in &touched {
            let img: Option<String> =
                c.query_opt(&format!("SELECT to_jsonb(x)::text FROM {t} x WHERE id = $1::text::uuid"), &[id]).await?.map(|r| r.get(0));
            images.push((*t, id.clone(), img.map(|s| serde_json::from_str::<Value>(&s).unwrap())));
        }
        let at: String = c.query_one("SELECT clock_timestamp()::text", &[]).await?.get(0);
        Ok::<_, tokio_postgres::Error>((xid, changes, images, at, applied))
    }
    .await;
    let (xid, changes, images, at, applied) = match prepared {
        Ok(v) => v,
        Err(e) => {
            if connection_lost(&e, c) {
                conn.lost();
                return TxnResult::Lost;
            }
            let _ = c.batch_execute("ROLLBACK").await;
            return TxnResult::Aborted;
        }
    };
    let mut lost = false;
    let committed = match c.batch_execute("COMMIT").await {
        Ok(()) => true,
        Err(e) if connection_lost(&e, c) => {
            lost = true;
            // The answer to COMMIT was lost: ask the server what happened.
            conn.lost();
            let status = loop {
                let c = conn.get().await;
                match c.query_one("SELECT txid_status($1)", &[&xid]).await {
                    Ok(r) => break r.get::<_, Option<String>>(0),
                    Err(_) => conn.lost(),
                }
            };
            history.push(json!({"kind": "ambiguous_commit", "seq": seq, "side": side, "xid": xid, "status": status, "at": now()}));
            status.as_deref() == Some("committed")
        }
        Err(_) => false,
    };
    if !committed {
        return if lost { TxnResult::Lost } else { TxnResult::Aborted };
    }
    history.push(json!({
        "kind": "write", "seq": seq, "side": side, "xid": xid, "clock_timestamp": at, "changes": changes,
        "ops": applied,
        "images": images.iter().map(|(t, id, img)| json!({"table": t, "id": id, "image": img.as_ref().map(abbreviate)})).collect::<Vec<_>>(),
    }));
    TxnResult::Committed(Committed { seq, side, xid, changes, images })
}

/// Writes on both sides, one transaction at a time, until `stop`.
async fn workload(local: TestDb, upstream: TestDb, seed: u64, mut stop: watch::Receiver<bool>, history: History) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut l = Conn::new(local);
    let mut u = Conn::new(upstream);
    let mut out = Outcome::default();
    let mut seq = 0;
    while !*stop.borrow() {
        seq += 1;
        let side = if rng.random_bool(0.55) { Side::Local } else { Side::Upstream };
        let n = if rng.random_bool(0.6) { 1 } else { rng.random_range(2..=4) };
        let ops: Vec<Op> = (0..n).map(|_| gen_op(&mut rng, side)).collect();
        let conn = match side {
            Side::Local => &mut l,
            Side::Upstream => &mut u,
        };
        out.attempted += 1;
        // A transaction cut off by a restart is run again once reconnected.
        let mut tries = 0;
        loop {
            tries += 1;
            match run_txn(conn, side, &ops, seq, &history).await {
                TxnResult::Committed(c) => out.committed.push(c),
                TxnResult::Aborted => out.rolled_back += 1,
                TxnResult::Lost if tries < 5 => {
                    out.retried += 1;
                    continue;
                }
                TxnResult::Lost => out.rolled_back += 1,
            }
            break;
        }
        let pause = Duration::from_millis(rng.random_range(5..40));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    out.ambiguous_committed =
        history.0.lock().unwrap().iter().filter(|v| v["kind"] == "ambiguous_commit" && v["status"] == "committed").count();
    out.ambiguous_aborted =
        history.0.lock().unwrap().iter().filter(|v| v["kind"] == "ambiguous_commit" && v["status"] != "committed").count();
    out
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

const APPLY: &str = "/rest/v1/rpc/centrovision_sync_apply";

/// The service process, restartable.
struct Service<'a> {
    pair: &'a Pair,
    running: Option<Running>,
    starts: usize,
}

impl Service<'_> {
    fn start(&mut self) {
        self.running = Some(self.pair.spawn_run(&[]));
        self.starts += 1;
    }
    fn kill(&mut self) {
        if let Some(mut r) = self.running.take() {
            kill9(&mut r);
        }
    }
    /// SIGTERM, then up to `grace` for a clean exit; SIGKILL after that.
    /// Returns how long it took, or None if it had to be killed.
    async fn terminate(&mut self, grace: Duration) -> Option<Duration> {
        let mut r = self.running.take()?;
        let started = Instant::now();
        let _ = std::process::Command::new("kill").args(["-TERM", &r.id().to_string()]).status();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = r.try_wait() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kill9(&mut r);
        None
    }
}

async fn restart_cluster(cluster: &Arc<Cluster>, kill_postmaster: bool) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        if kill_postmaster {
            c.kill_postmaster();
            c.start_again();
        } else {
            c.restart(StopMode::Immediate);
        }
    })
    .await
    .expect("cluster restart panicked");
}

/// Journal rows delivered so far (a progress signal for pacing only).
async fn synced_rows(local: &TestDb) -> Option<i64> {
    let c = local.try_connect().await.ok()?;
    c.query_one("SELECT count(*) FROM _sync_pending WHERE synced", &[]).await.ok().map(|r| r.get(0))
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

async fn chaos(mode: Mode) {
    let seed = seed();
    let faults = fault_count();
    let mode_name = match mode {
        Mode::Postgres => "postgres",
        Mode::Rest => "rest",
    };
    let release = if cfg!(debug_assertions) { "" } else { " --release" };
    say(&format!(
        "chaos {mode_name}: CHAOS_SEED={seed} CHAOS_FAULTS={faults} \
         (reproduce: CHAOS_SEED={seed} CHAOS_FAULTS={faults} cargo test{release} --test it chaos::{mode_name} -- --exact --nocapture)"
    ));
    let started = Instant::now();
    let history = History::default();
    history.push(json!({"kind": "start", "seed": seed, "mode": mode_name, "faults": faults, "at": now()}));

    let local_cluster = Arc::new(Cluster::start(ClusterOptions::default()));
    let upstream_cluster = Arc::new(Cluster::start(ClusterOptions::default()));
    let local_db = local_cluster.create_database(&format!("chaos_{mode_name}_l")).await;
    let upstream_db = upstream_cluster.create_database(&format!("chaos_{mode_name}_u")).await;
    let pair = Pair::on(local_db.clone(), upstream_db.clone(), mode).await;

    // The service reaches upstream only through the proxy.
    let target: std::net::SocketAddr = match mode {
        Mode::Postgres => format!("127.0.0.1:{}", upstream_db.port()).parse().unwrap(),
        Mode::Rest => pair.standin().url().trim_start_matches("http://").parse().unwrap(),
    };
    let proxy = Proxy::start(target).await;
    let config = std::fs::read_to_string(pair.config_path()).unwrap();
    let config = match mode {
        Mode::Postgres => config.replace(
            &format!("host={} port={} ", upstream_db.host(), upstream_db.port()),
            &format!("host=127.0.0.1 port={} ", proxy.port()),
        ),
        Mode::Rest => config.replace(&pair.standin().url(), &format!("http://{}", proxy.addr())),
    }
    .replace("[supabase]\n", "[supabase]\nrequest_timeout_seconds = 10\nconnect_timeout_seconds = 5\n");
    assert!(config.contains(&proxy.port().to_string()), "config not pointed at the proxy:\n{config}");
    std::fs::write(pair.config_path(), config).unwrap();
    for w in workarounds() {
        say(&format!("chaos {mode_name}: stepping around known bug {} (CHAOS_WORKAROUNDS=0 to disable)", w.bug()));
        history.push(json!({"kind": "workaround", "bug": w.bug(), "what": format!("{w:?}")}));
        if let Workaround::Sql { sql, .. } = w {
            local_db.connect().await.batch_execute(sql).await.unwrap();
        }
    }
    pair.init().await;

    let mut service = Service { pair: &pair, running: None, starts: 0 };
    service.start();

    let (stop_tx, stop_rx) = watch::channel(false);
    let work = tokio::spawn(workload(local_db.clone(), upstream_db.clone(), seed, stop_rx, history.clone()));

    // ---- faults ---------------------------------------------------------
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut stalls = 0usize;
    let mut last_synced = 0i64;
    for n in 1..=faults {
        let roll = rng.random_range(0..100);
        let rest = mode == Mode::Rest;
        let at = now();
        let t0 = Instant::now();
        let (kind, detail): (&'static str, Value) = match roll {
            0..=14 => {
                service.kill();
                let down = Duration::from_millis(rng.random_range(0..1500));
                tokio::time::sleep(down).await;
                service.start();
                ("kill_service", json!({"down_ms": down.as_millis() as u64}))
            }
            15..=26 => {
                let hard = rng.random_bool(0.25);
                restart_cluster(&local_cluster, hard).await;
                ("restart_local", json!({"how": if hard { "kill -9 postmaster" } else { "pg_ctl stop -m immediate" }}))
            }
            27..=38 => {
                restart_cluster(&upstream_cluster, false).await;
                ("restart_upstream", json!({"how": "pg_ctl stop -m immediate"}))
            }
            39..=99 if !rest || roll < 70 => {
                let fault = match rng.random_range(0..5) {
                    0 => NetFault::Delay(Duration::from_millis(rng.random_range(20..400))),
                    1 => NetFault::Blackhole,
                    2 => NetFault::Reset,
                    3 => NetFault::HalfOpen(Direction::ToClient),
                    _ => NetFault::HalfOpen(Direction::ToServer),
                };
                let hold = Duration::from_millis(rng.random_range(300..2500));
                proxy.set(fault);
                tokio::time::sleep(hold).await;
                proxy.set(NetFault::Pass);
                ("network", json!({"fault": format!("{fault:?}"), "hold_ms": hold.as_millis() as u64}))
            }
            _ => {
                let s = pair.standin();
                let prefix = [APPLY, "/rest/v1/", "/rest/v1/rpc/", "/rest/v1/patients"][rng.random_range(0..4)];
                let fault = match rng.random_range(0..5) {
                    0 => Fault::Status { code: 429, retry_after_secs: Some(rng.random_range(1..3)), body: None },
                    1 => Fault::Status { code: 503, retry_after_secs: None, body: None },
                    2 => Fault::DropConnection,
                    3 => Fault::Delay(Duration::from_millis(rng.random_range(500..4000))),
                    _ => Fault::MalformedJson,
                };
                let hold = Duration::from_millis(rng.random_range(300..2500));
                s.faults().set_persistent(prefix, Some(fault.clone()));
                tokio::time::sleep(hold).await;
                s.faults().set_persistent(prefix, None);
                ("http", json!({"fault": format!("{fault:?}"), "prefix": prefix, "hold_ms": hold.as_millis() as u64}))
            }
        };
        *kinds.entry(kind).or_default() += 1;
        history.push(json!({"kind": "fault", "n": n, "fault": kind, "detail": detail, "at": at, "healed_at": now(),
                            "took_ms": t0.elapsed().as_millis() as u64}));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        // Every few faults, give the service a moment to make progress, so
        // faults keep landing on a service that is mid-work rather than one
        // asleep in a long backoff. Not an assertion: a note if it stalls.
        if n % 10 == 0 {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let s = synced_rows(&local_db).await.unwrap_or(last_synced);
                if s > last_synced {
                    last_synced = s;
                    break;
                }
                if Instant::now() >= deadline {
                    stalls += 1;
                    history.push(json!({"kind": "note", "at": now(), "text": "no push progress for 15 s after a settle point"}));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // ---- heal, stop, final once ----------------------------------------
    proxy.set(NetFault::Pass);
    if let Some(s) = &pair.rest {
        s.faults().clear();
    }
    let _ = stop_tx.send(true);
    let outcome = work.await.expect("the workload task panicked");
    let synced_by_run = synced_rows(&local_db).await.unwrap_or(0);
    let stop_took = service.terminate(Duration::from_secs(60)).await;
    history.push(json!({"kind": "healed", "at": now(), "sigterm_exit_ms": stop_took.map(|d| d.as_millis() as u64)}));

    let mut once_attempts = 0;
    let mut once_reruns = 0;
    let mut once_errors = Vec::new();
    let once_started = now();
    let mut once_log = String::new();
    loop {
        once_attempts += 1;
        let out = pair.exec(&["once"], &[]).await;
        once_log.push_str(&format!("==== once attempt {once_attempts} ({})\n", out.status));
        once_log.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            let again = workarounds().iter().any(|w| matches!(w, Workaround::OnceAgain { .. }));
            let left: i64 = local_db
                .connect()
                .await
                .query_one("SELECT count(*) FROM _sync_pending WHERE NOT synced AND parked_at IS NULL", &[])
                .await
                .unwrap()
                .get(0);
            if left > 0 && again && once_reruns < 2 {
                once_reruns += 1;
                history.push(json!({"kind": "once_left_rows_unsynced", "rows": left, "at": now()}));
                say(&format!(
                    "chaos {mode_name} seed {seed}: `once` exited 0 leaving {left} journal rows unsynced \
                     (known bug once_delivers_everything_committed_before_it_started); running it again"
                ));
                continue;
            }
            break;
        }
        let err = tail(&String::from_utf8_lossy(&out.stderr), 5);
        history.push(json!({"kind": "once_failed", "attempt": once_attempts, "at": now(), "stderr": err}));
        once_errors.push(err);
        if once_attempts >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // ---- checks ---------------------------------------------------------
    let mut failures: Vec<String> = Vec::new();
    if once_errors.len() >= 5 {
        failures.push(format!("`once` failed 5 times after healing; last error:\n{}", once_errors.last().unwrap()));
    }
    let l = local_db.connect().await;
    let u = upstream_db.connect().await;
    for c in [&l, &u] {
        c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    }

    // 1. Both sides identical.
    for t in TABLES {
        let a = Pair::rows(&local_db, t).await;
        let b = Pair::rows(&upstream_db, t).await;
        if a != b {
            failures.push(format!("table {t} differs between local and upstream:\n{}", support::sync::diff_rows(&a, &b)));
        }
    }

    // 2. Every row is its latest write.
    let mut latest: HashMap<(&'static str, String), (usize, Side, Option<Value>)> = HashMap::new();
    for w in &outcome.committed {
        for (t, id, img) in &w.images {
            latest.insert((t, id.clone()), (w.seq, w.side, img.clone()));
        }
    }
    let mut wrong = 0;
    for (ti, t) in WRITTEN.iter().enumerate() {
        for i in 0..POOL[ti] {
            let id = pool_id(ti, i);
            let actual: Option<Value> = l
                .query_opt(&format!("SELECT to_jsonb(x)::text FROM {t} x WHERE id = $1::text::uuid"), &[&id])
                .await
                .unwrap()
                .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap());
            let expected = latest.get(&(*t, id.clone()));
            let want = expected.and_then(|(_, _, img)| img.clone());
            if actual != want {
                wrong += 1;
                if wrong <= 5 {
                    let columns = diff_columns(actual.as_ref(), want.as_ref());
                    failures.push(format!(
                        "{t} {id}: not its latest write (write #{}, {:?} side){columns}",
                        expected.map_or(0, |e| e.0),
                        expected.map(|e| e.1)
                    ));
                }
            }
        }
    }
    if wrong > 5 {
        failures.push(format!("... {wrong} rows in all are not their latest write"));
    }

    // 3. The journal: no duplicates, each local transaction exactly once.
    let dup: i64 = l
        .query_one("SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)) FROM _sync_pending WHERE commit_lsn IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if dup != 0 {
        failures.push(format!("{dup} duplicate (commit_lsn, ordinal) journal rows"));
    }
    let split: i64 = l
        .query_one(
            "SELECT count(*) FROM (SELECT xid FROM _sync_pending WHERE xid IS NOT NULL GROUP BY xid HAVING count(DISTINCT commit_lsn) > 1) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if split != 0 {
        failures.push(format!("{split} transactions journaled under more than one commit LSN"));
    }
    let journal: HashMap<i64, i64> = l
        .query("SELECT xid, count(*) FROM _sync_pending WHERE xid IS NOT NULL GROUP BY xid", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected_xids: HashMap<i64, i64> = HashMap::new();
    for w in outcome.committed.iter().filter(|w| w.side == Side::Local) {
        *expected_xids.entry(w.xid & 0xffff_ffff).or_default() += w.changes as i64;
    }
    let mut miscounted = Vec::new();
    for (xid, want) in &expected_xids {
        let got = journal.get(xid).copied().unwrap_or(0);
        if got != *want {
            miscounted.push(format!("xid {xid}: {got} journal rows for {want} row changes"));
        }
    }
    let foreign: Vec<&i64> = journal.keys().filter(|x| !expected_xids.contains_key(x)).collect();
    if !miscounted.is_empty() {
        failures.push(format!(
            "{} local transactions not journaled exactly once: {}",
            miscounted.len(),
            miscounted.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !foreign.is_empty() {
        failures.push(format!(
            "journal holds rows of {} transactions the workload did not commit locally (echo of down-path writes?): xids {:?}",
            foreign.len(),
            foreign.iter().take(5).collect::<Vec<_>>()
        ));
    }

    // 4. Nothing parked or left behind.
    let left = l
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT synced AND parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL AND NOT synced),
                    (SELECT string_agg(DISTINCT error, ' | ') FROM _sync_pending WHERE parked_at IS NOT NULL AND NOT synced)
             FROM _sync_pending",
            &[],
        )
        .await
        .unwrap();
    let (unsynced, parked): (i64, i64) = (left.get(0), left.get(1));
    if unsynced != 0 || parked != 0 {
        // When were they journaled, relative to the final once?
        let detail: String = l
            .query_one(
                "SELECT coalesce(string_agg(format('#%s %s %s %s lsn %s/%s created %s retries %s', id, table_name, operation, record_id,
                                                   commit_lsn, ordinal, created_at, retry_count), E'\n' ORDER BY id), '')
                 FROM (SELECT * FROM _sync_pending WHERE NOT synced ORDER BY id LIMIT 40) p",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let capture: String = l.query_one("SELECT coalesce(string_agg(t::text, ' '), '') FROM _sync_capture t", &[]).await.unwrap().get(0);
        history.push(json!({"kind": "unsynced_after_once", "once_started": once_started, "rows": detail, "capture": capture}));
        failures.push(format!(
            "{unsynced} journal rows unsynced and {parked} parked after the final once (started {once_started}); errors: {:?}\n{}\n_sync_capture: {capture}",
            left.get::<_, Option<String>>(2),
            tail(&detail, 10)
        ));
    }

    // 5. A clean stop.
    if stop_took.is_none() {
        failures.push("`run` did not exit within 60 s of SIGTERM (it had to be SIGKILLed)".into());
    }

    let local_txns = outcome.committed.iter().filter(|w| w.side == Side::Local).count();
    let summary = format!(
        "chaos {mode_name} seed {seed}: {faults} faults {kinds:?} in {:.0?}; workload {} txns attempted, {} committed \
         ({local_txns} local, {} upstream), {} rolled back, {} retried after a lost connection, ambiguous commits {} committed / {} aborted; \
         {} service starts; journal {} rows, {} delivered by `run` before the final once ({} once attempts, {} of them re-runs for a known bug); \
         {stalls} settle points without progress; proxy {:?}",
        started.elapsed(),
        outcome.attempted,
        outcome.committed.len(),
        outcome.committed.len() - local_txns,
        outcome.rolled_back,
        outcome.retried,
        outcome.ambiguous_committed,
        outcome.ambiguous_aborted,
        service.starts,
        journal.values().sum::<i64>(),
        synced_by_run,
        once_attempts,
        once_reruns,
        proxy.stats(),
    );
    say(&summary);
    history.push(json!({"kind": "end", "at": now(), "summary": summary, "failures": failures}));

    let keep = std::env::var_os("CHAOS_KEEP_HISTORY").is_some_and(|v| v != "0");
    if !failures.is_empty() || keep {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("chaos-history-{mode_name}-{seed}.jsonl"));
        history.write(&path);
        let log_path = dir.join(format!("chaos-service-{mode_name}-{seed}.log"));
        let _ = std::fs::write(&log_path, format!("{}\n==== the final `once`\n{once_log}", pair.run_log()));
        say(&format!("chaos {mode_name} seed {seed}: history in {}, service log in {}", path.display(), log_path.display()));
    }
    assert!(
        failures.is_empty(),
        "chaos {mode_name} (CHAOS_SEED={seed} CHAOS_FAULTS={faults}) found {} problems:\n- {}\n{summary}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// The columns in which two row images differ, for the failure message.
fn diff_columns(actual: Option<&Value>, want: Option<&Value>) -> String {
    match (actual, want) {
        (None, None) => String::new(),
        (None, Some(_)) => ": the row is missing".into(),
        (Some(_), None) => ": the row exists but its latest write deleted it (or it was never written)".into(),
        (Some(a), Some(w)) => {
            let mut out = String::new();
            if let (Some(a), Some(w)) = (a.as_object(), w.as_object()) {
                for (k, wv) in w {
                    let av = a.get(k).unwrap_or(&Value::Null);
                    if av != wv {
                        out.push_str(&format!("\n    {k}: is {} but the latest write left {}", abbreviate(av), abbreviate(wv)));
                    }
                }
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions found by the chaos run, as deterministic tests
// ---------------------------------------------------------------------------

/// Found by chaos (e.g. `CHAOS_SEED=14353857506870526407`, REST mode): an
/// UPDATE that does not touch a TOASTed column reaches the WAL without that
/// column's value ("unchanged TOAST"); capture fills it from the latest
/// *journaled* image of the row. A value that came down from upstream is
/// applied locally under the replication origin and never journaled, so the
/// fill picks the older, local value, pushes it with the newer `updated_at`,
/// and upstream's value is overwritten on both sides: the other clinic's
/// note is lost. (Tables with REPLICA IDENTITY FULL are not affected: the
/// old tuple carries the value.)
async fn a_local_update_keeps_a_toasted_value_that_came_down(mode: Mode) {
    const ID: &str = "c4a05000-0000-4000-8000-00000000a001";
    let pair = Pair::new("toast_came_down", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local
        .batch_execute(&format!("INSERT INTO patients (id, full_name, notes) VALUES ('{ID}', 'Ana', 'first note, written locally')"))
        .await
        .unwrap();
    pair.once().await;
    // Another clinic replaces the note with a long one (> 8 kB, incompressible: TOASTed).
    up.batch_execute(&format!(
        "UPDATE patients SET notes = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g) WHERE id = '{ID}'"
    ))
    .await
    .unwrap();
    pair.once().await;
    assert_eq!(notes_len(&local, ID).await, 12_800, "the long note came down");
    // The clinic then edits only the phone number.
    local.batch_execute(&format!("UPDATE patients SET phone = '+56 9 5555' WHERE id = '{ID}'")).await.unwrap();
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(notes_len(&up, ID).await, 12_800, "upstream's long note was overwritten by an older local value");
    assert_eq!(notes_len(&local, ID).await, 12_800);
}

mod a_local_update_keeps_a_toasted_value_that_came_down {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_local_update_keeps_a_toasted_value_that_came_down(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::a_local_update_keeps_a_toasted_value_that_came_down(crate::support::sync::Mode::Rest).await
    }
}

async fn notes_len(c: &Client, id: &str) -> i32 {
    c.query_one("SELECT length(notes) FROM patients WHERE id = $1::text::uuid", &[&id]).await.unwrap().get(0)
}

/// A connection to upstream whose answers silently stop coming (a NAT
/// mapping dropped, the far end gone: half-open) must not stall sync once
/// the network works again: the service has to give up on the dead
/// connection by itself (`[supabase] request_timeout_seconds`) and open a
/// new one. The proxy here never resets the dead connection, as a real
/// network would only after TCP's retransmission timeout (~15 min).
async fn a_half_open_upstream_connection_does_not_stall_sync(mode: Mode) {
    let pair = Pair::new("half_open", mode).await;
    let target: std::net::SocketAddr = match mode {
        Mode::Postgres => format!("127.0.0.1:{}", pair.upstream.port()).parse().unwrap(),
        Mode::Rest => pair.standin().url().trim_start_matches("http://").parse().unwrap(),
    };
    let proxy = Proxy::start(target).await;
    let config = std::fs::read_to_string(pair.config_path()).unwrap();
    let config = match mode {
        Mode::Postgres => config.replace(
            &format!("host={} port={} ", pair.upstream.host(), pair.upstream.port()),
            &format!("host=127.0.0.1 port={} ", proxy.port()),
        ),
        Mode::Rest => config.replace(&pair.standin().url(), &format!("http://{}", proxy.addr())),
    }
    .replace("[supabase]\n", "[supabase]\nrequest_timeout_seconds = 5\nconnect_timeout_seconds = 5\n");
    std::fs::write(pair.config_path(), config).unwrap();
    pair.init().await;
    let _run = pair.spawn_run(&[]);
    let local = pair.local.connect().await;
    local.batch_execute("INSERT INTO services (name) VALUES ('before')").await.unwrap();
    pair.wait_converged(Duration::from_secs(60)).await;
    // Answers stop coming back on every open connection...
    proxy.set(NetFault::HalfOpen(Direction::ToClient));
    local.batch_execute("INSERT INTO services (name) VALUES ('during')").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...then the network is fine again, but those connections stay dead.
    proxy.heal_new_connections_only();
    local.batch_execute("INSERT INTO services (name) VALUES ('after')").await.unwrap();
    // request_timeout_seconds (5) + backoff: well within a minute.
    pair.wait_converged(Duration::from_secs(60)).await;
}

mod a_half_open_upstream_connection_does_not_stall_sync {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_half_open_upstream_connection_does_not_stall_sync(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::a_half_open_upstream_connection_does_not_stall_sync(crate::support::sync::Mode::Rest).await
    }
}

/// Found by chaos (`CHAOS_SEED=15309102622483206507`, REST: 9 local
/// restarts, only 344 of 1916 journal rows delivered by `run`): after the
/// local database restarts under `run`, local changes must keep flowing
/// upstream without restarting the service. Capture and the down path
/// reconnect; the pusher must too.
async fn a_local_restart_under_run_does_not_stop_pushing(mode: Mode) {
    let local_cluster = Arc::new(Cluster::start(ClusterOptions::default()));
    let local_db = local_cluster.create_database("restart_push_l").await;
    let upstream_db = Cluster::shared().create_database("restart_push_u").await;
    let pair = Pair::on(local_db, upstream_db, mode).await;
    pair.init().await;
    let _run = pair.spawn_run(&[]);
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('before the restart')").await.unwrap();
    pair.wait_converged(Duration::from_secs(60)).await;
    restart_cluster(&local_cluster, false).await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('after the restart')").await.unwrap();
    // Capture journals it within a few seconds of the restart...
    support::wait_for("the change journaled", Duration::from_secs(60), || async {
        let n: i64 = pair.local.connect().await.query_one("SELECT count(*) FROM _sync_pending", &[]).await.unwrap().get(0);
        (n == 2).then_some(())
    })
    .await;
    // ...and the pusher delivers it (backoff is capped at 60 s; allow two caps).
    let delivered = tokio::time::timeout(Duration::from_secs(130), async {
        while Pair::rows(&pair.local, "services").await != Pair::rows(&pair.upstream, "services").await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if delivered.is_err() {
        let log = pair.run_log();
        let why: Vec<&str> = log.lines().filter(|l| l.contains("ALERT") || l.contains("push failed") || l.contains("offline")).collect();
        panic!(
            "the change made after the local restart never reached upstream (130 s); the service said:\n{}",
            why.iter().take(8).map(|l| tail(l, 1)).collect::<Vec<_>>().join("\n")
        );
    }
}

mod a_local_restart_under_run_does_not_stop_pushing {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_local_restart_under_run_does_not_stop_pushing(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::a_local_restart_under_run_does_not_stop_pushing(crate::support::sync::Mode::Rest).await
    }
}

/// Found by chaos (`CHAOS_SEED=12747018787394436688`, REST): the final
/// `once` exited 0 with 26 journal rows unsynced, though `once` promises to
/// deliver everything committed before it started. Its pusher stops at the
/// first empty queue it sees once capture has passed the marker, but it reads
/// the queue *before* it looks at "capture passed the marker": when capture
/// journals the last changes and passes the marker while the pusher's read of
/// the queue is in flight, the read comes back empty (its snapshot predates
/// the journal commit), the flag is already set, and the pusher stops with
/// those changes unsent (src/commands/service.rs push_while: `Ok(r) if
/// r.rows == 0` then `if *done.borrow() { break }`).
///
/// The race is narrow; a big journal makes the queue read slow (here: 2M
/// delivered rows and no partial queue index, as a long retention on a busy
/// clinic could look without the index), which makes the read straddle the
/// journal commit almost every time.
async fn once_delivers_everything_committed_before_it_started(mode: Mode) {
    let pair = Pair::new("once_race", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    local
        .batch_execute(
            "INSERT INTO _sync_pending (table_name, record_id, operation, synced, synced_at)
             SELECT 'services', 'old-' || g, 'INSERT', true, now() FROM generate_series(1, 2000000) g;
             DROP INDEX idx_sync_pending_queue;
             ANALYZE _sync_pending;",
        )
        .await
        .unwrap();
    for round in 0..3 {
        local.batch_execute(&format!("INSERT INTO services (name) VALUES ('round {round}')")).await.unwrap();
        pair.once().await;
        let unsynced: i64 = local.query_one("SELECT count(*) FROM _sync_pending WHERE NOT synced", &[]).await.unwrap().get(0);
        assert_eq!(unsynced, 0, "round {round}: `once` exited 0 leaving {unsynced} changes committed before it started unsent");
    }
    pair.assert_converged().await;
}

mod once_delivers_everything_committed_before_it_started {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::once_delivers_everything_committed_before_it_started(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::once_delivers_everything_committed_before_it_started(crate::support::sync::Mode::Rest).await
    }
}

//! Chaos: two clinics and the cloud app write the same rows while faults hit
//! every moving part; then proof that nothing was lost and that every row
//! ended as the conflict rule allows.
//!
//! Each run starts three dedicated clusters (clinic A, clinic B, upstream;
//! dedicated so each can be crashed), one real `centrovision-sync run` per
//! clinic (its own config, slot, origin and `[sync] clinic_id`: writers
//! `clinic-a` and `clinic-b`), each reaching upstream only through its own
//! in-process TCP proxy (`support::proxy`), and in REST mode its own
//! PostgREST stand-in. A third writer, the "cloud app", writes upstream
//! directly (writer `cloud:<role>`, recorded by the upstream trigger).
//!
//! The workload writes a small pool of rows from all three writers (inserts,
//! updates, soft deletes, undeletes, hard deletes, >8 kB TOASTed notes,
//! updates that leave the TOASTed notes untouched, multi-statement
//! transactions; stamps from `now()` via the tables' triggers). Each clinic
//! writes through two connections, and about a third of its transactions
//! come as an overlapping pair: X begins (its stamp is that instant), Y
//! begins, runs and commits, then X runs and commits — so X commits last
//! with the older `updated_at`, and commit order is not stamp order. The
//! workload is one task: commits are serialized (a COMMIT returns before the
//! next one is sent, on any writer), so the order of its records is the
//! commit order on each cluster. When the faults are over, a finale gives
//! a few rows their last versions from an overlapping pair of changes of
//! that row at each clinic. Meanwhile, faults at random, on either
//! clinic:
//!
//! - SIGKILL of a clinic's service, then a new `run`;
//! - immediate-mode restart of a clinic's cluster (or SIGKILL of its
//!   postmaster), of the upstream cluster;
//! - the network between a clinic's service and upstream: delay,
//!   blackhole, reset, half-open in either direction (see
//!   `support/proxy.rs`);
//! - REST mode only, HTTP faults at a clinic's PostgREST stand-in: 429
//!   with Retry-After, 503, dropped connections, slow answers, a 200 that
//!   is not JSON.
//!
//! Then everything heals, both services are stopped with SIGTERM, `once`
//! runs at A, B, A, B (each retried a few times if it fails right after the
//! faults), and the test checks:
//!
//! 1. every synced table is identical in all three databases;
//! 2. every pool row ended in a state the conflict rule can reach (the
//!    oracle, below); rows never written are absent;
//! 3. every overwritten version is in the conflict log (the checked
//!    subset, below);
//! 4. per clinic, the journal holds no duplicate change (`(commit_lsn,
//!    ordinal)`), no transaction under two commit LSNs, exactly as many rows
//!    for each committed local transaction as that transaction changed rows,
//!    and nothing from a transaction the workload did not commit there (an
//!    echo of a down-path write would show up here);
//! 5. nothing is parked or left unsynced at either clinic;
//! 6. each `run` stopped within 60 s of SIGTERM.
//!
//! **The oracle** (README, "The conflict rule"). A version is what one
//! committed transaction left of one row: its image read back inside the
//! transaction (None: deleted), its writer, and its stamp — `updated_at` for
//! an upsert (the trigger's `now()`), for a delete the commit time at a
//! clinic (`commit_ts` of its journal rows, what the service sends) and
//! `now()` for the cloud app (what the upstream trigger records). Upstream
//! applies each writer's versions in that writer's commit order, but how
//! the three writers interleave on arrival is decided by timing, so the
//! final state of a row is not unique. The check is that it is *reachable*:
//! some interleaving of the three version sequences, folded from "no
//! version" by the rule — same writer: the later commit replaces; different
//! writers: the later stamp wins, on equal stamps a delete, then the higher
//! writer id (byte order); a cloud version always lands (it is a direct
//! write against the current upstream state) — ends with the version
//! upstream holds: same writer, stamp and deleted flag as
//! `centrovision_sync.row_version`, and the same image as the row. A
//! depth-first search over (position in each writer's sequence, current
//! version) per row is cheap: the pools have 6–14 rows per table.
//! Real time constrains the interleavings only where it is certain: a cloud
//! version committed before a clinic's local commit (the workload's commits
//! are serialized) was upstream before that clinic version could arrive.
//! Between the two clinics any arrival order is possible (a clinic offline
//! for a while delivers its old versions late).
//!
//! **The conflict log.** Only each writer's *last* version of a row
//! matters: earlier ones were replaced by a later commit of their own
//! writer (the pusher even coalesces them away). Such a last version that
//! is not the row's final version must be in `centrovision_sync.conflict`
//! as a loser (`loser_writer`, `loser_stamp`, `loser_deleted`): logged by
//! `lost` when it arrived and lost, or by `over` when a clinic version
//! later replaced it. Three cases are exempt, and counted in the summary:
//! - a version a cloud write replaced: the cloud app writes against the
//!   current upstream state (it had "downloaded" the version), which the
//!   rule does not log. Each cloud transaction reads the version it
//!   replaces (`row_version`) under the locks the apply takes (the row FOR
//!   UPDATE, then the per-key advisory lock), so this is exact: the test
//!   exempts that very version, not any version a cloud write might have
//!   replaced. (A real cloud app takes no such locks; they only make the
//!   read and the write one step.)
//! - a delete, when another writer also deleted the row: a tombstone
//!   replacing a tombstone (or a delete losing to one) loses nothing and is
//!   not logged.
//!
//! - a version a clinic had downloaded when it changed the row: the pusher
//!   sends that version as the change's base (`b`), and replacing the
//!   version one has seen is an edit, not a conflict. Each clinic
//!   transaction reads the row as it has it before its first change of it;
//!   a last version whose image some other clinic had that way is exempt,
//!   and so is a last version that is a delete when some other clinic
//!   changed the row while it had it absent (re-created a row whose delete
//!   it had downloaded; its base is the tombstone). (This can exempt more
//!   than the rule does — that clinic's change may have replaced a later
//!   version, or it may never have had the row — never less.)
//!
//! Reproducibility: the seed fixes every random decision (workload
//! operations and values, overlaps, fault kinds and targets, durations and
//! pacing); thread timing still decides how they interleave with the
//! services, so a seed reproduces the scenario, not the exact schedule. On
//! failure the whole history (seed, every committed write with its writer,
//! images and stamps, every fault with start/heal times, proxy counters) is
//! written as JSON lines to
//! `$CARGO_TARGET_TMPDIR/chaos-history-<mode>-<seed>.jsonl` (next to it, the
//! services' logs), and the path is printed.
//!
//! Both modes run every time (`chaos::postgres` and `chaos::rest`, same
//! seed when `CHAOS_SEED` is set): the two transports fail differently
//! (a broken PostgreSQL session vs. HTTP retries, keep-alive pools and
//! rate limits), and a fault class only one mode has would otherwise be
//! exercised only every other run.
//!
//! Knobs: `CHAOS_SEED` (default: random, always printed), `CHAOS_FAULTS`
//! (default 30, the CI variant, about a minute and a half per mode in
//! debug), `CHAOS_KEEP_HISTORY=1` (write the history even on success),
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

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Run this on each clinic's database before `init`.
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

/// Rows whose last versions come from the workload's finale (see `workload`).
const FINALE_ROWS: usize = 8;
/// The tables the workload writes (all of `TABLES` are synced and checked).
const WRITTEN: [&str; 4] = ["branches", "services", "patients", "appointments"];
/// Rows per written table: few, so all writers keep hitting the same rows.
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

/// Who wrote a version: one of the two clinics (through its local database
/// and its service) or the cloud app (directly upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
enum Writer {
    A,
    B,
    Cloud,
}

const WRITERS: [Writer; 3] = [Writer::A, Writer::B, Writer::Cloud];
/// The clinics' `[sync] clinic_id`, in `Writer` order.
const CLINIC_IDS: [&str; 2] = ["clinic-a", "clinic-b"];

impl Writer {
    fn idx(self) -> usize {
        self as usize
    }
    fn is_clinic(self) -> bool {
        self != Writer::Cloud
    }
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
                        // lock_timeout: one task drives every connection, so a statement
                        // must never wait for long on a lock (the down path's, the apply's).
                        if c.batch_execute("SET TimeZone = 'UTC'; SET lock_timeout = '2s'").await.is_ok() {
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

fn gen_op(rng: &mut StdRng) -> Op {
    let t = rng.random_range(0..WRITTEN.len());
    let i = rng.random_range(0..POOL[t]);
    gen_op_at(rng, t, i)
}

/// A change of pool row `i` of table `WRITTEN[t]`.
fn gen_op_at(rng: &mut StdRng, t: usize, i: usize) -> Op {
    let table = WRITTEN[t];
    let id = pool_id(t, i);
    let r: u32 = rng.random_range(0..1_000_000);
    let other = |rng: &mut StdRng, tt: usize| pool_id(tt, rng.random_range(0..POOL[tt]));
    let roll = rng.random_range(0..100);
    let (kind, sql) = if roll >= 90 {
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

fn gen_ops(rng: &mut StdRng) -> Vec<Op> {
    let n = if rng.random_bool(0.6) { 1 } else { rng.random_range(2..=4) };
    (0..n).map(|_| gen_op(rng)).collect()
}

/// The second transaction of an overlapping pair: half the time it starts
/// with a change of the first one's first row, so that one clinic's
/// out-of-stamp-order commits often hit one row.
fn gen_ops_overlapping(rng: &mut StdRng, first: &[Op]) -> Vec<Op> {
    let mut ops = gen_ops(rng);
    if rng.random_bool(0.5) {
        let t = WRITTEN.iter().position(|t| *t == first[0].table).unwrap();
        let i = (0..POOL[t]).position(|i| pool_id(t, i) == first[0].id).unwrap();
        ops[0] = gen_op_at(rng, t, i);
    }
    ops
}

/// An upstream version as the cloud app read it before replacing it:
/// `row_version` writer, stamp (JSON text), deleted.
type SeenVersion = (String, String, bool);

/// A committed transaction.
#[derive(Debug, Clone)]
struct Committed {
    /// Position in the commit order of all writers (commits are serialized).
    seq: usize,
    writer: Writer,
    /// `txid_current()` (with epoch).
    xid: i64,
    /// `now()` of the transaction (JSON text): the stamp of a cloud delete.
    begun: String,
    /// Row changes it made (what capture must journal, at a clinic).
    changes: u64,
    /// Final image of every row it touched (None: deleted).
    images: Vec<(&'static str, String, Option<Value>)>,
    /// Cloud only: for every row it changed, the upstream version it replaced
    /// (`row_version` writer, stamp as JSON text, deleted), read under the
    /// locks the apply takes.
    replaced: Vec<(&'static str, String, Option<SeenVersion>)>,
    /// Clinics only: for every row it changed, the row as the clinic had it
    /// before (None: absent), read in the transaction before its first change.
    seen_before: Vec<(&'static str, String, Option<Value>)>,
}

/// What the workload did, for the checks.
#[derive(Default)]
struct Outcome {
    committed: Vec<Committed>,
    attempted: usize,
    rolled_back: usize,
    /// Transactions run again after their connection was lost.
    retried: usize,
    /// Overlapping pairs where both committed, the older-stamped one last.
    overlapped: usize,
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

/// A transaction begun, not yet run: its stamp is already fixed.
struct Begun {
    xid: i64,
    begun: String,
}

async fn begin(conn: &mut Conn) -> Result<Begun, TxnResult> {
    let c = conn.get().await;
    let r = async {
        c.batch_execute("BEGIN").await?;
        let row = c.query_one("SELECT txid_current(), to_jsonb(now()) #>> '{}'", &[]).await?;
        Ok::<_, tokio_postgres::Error>(Begun { xid: row.get(0), begun: row.get(1) })
    }
    .await;
    match r {
        Ok(b) => Ok(b),
        Err(e) if connection_lost(&e, c) => {
            conn.lost();
            Err(TxnResult::Lost)
        }
        Err(_) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(TxnResult::Aborted)
        }
    }
}

/// Runs `ops` in the begun transaction and commits it.
async fn finish(conn: &mut Conn, begun: Begun, writer: Writer, ops: &[Op], seq: usize, history: &History) -> TxnResult {
    let Begun { xid, begun } = begun;
    let c = conn.get().await;
    // Before COMMIT, any failure means the transaction did not commit.
    let prepared = async {
        let mut changes = 0u64;
        let mut touched: Vec<(&'static str, String)> = Vec::new();
        let mut applied = Vec::new();
        let mut replaced = Vec::new();
        let mut seen_before = Vec::new();
        for op in ops {
            c.batch_execute("SAVEPOINT op").await?;
            let first_change = !touched.iter().any(|(t, i)| *t == op.table && *i == op.id);
            let local_before: Option<Option<Value>> = if writer != Writer::Cloud && first_change {
                Some(
                    // FOR UPDATE: the row as the change will find it (a down-path page
                    // committing meanwhile is waited for), not as the snapshot had it.
                    c.query_opt(&format!("SELECT to_jsonb(x)::text FROM {} x WHERE id = $1::text::uuid FOR UPDATE", op.table), &[&op.id])
                        .await?
                        .map(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).unwrap()),
                )
            } else {
                None
            };
            let before = if writer == Writer::Cloud && first_change { Some(version_before(c, op).await) } else { None };
            let result = match before {
                Some(Err(e)) => Err(e),
                Some(Ok(v)) => c.execute(op.sql.as_str(), &[]).await.map(|n| (n, Some(v))),
                None => c.execute(op.sql.as_str(), &[]).await.map(|n| (n, None)),
            };
            match result {
                Ok((n, before)) => {
                    changes += n;
                    if n > 0 && first_change {
                        touched.push((op.table, op.id.clone()));
                        if let Some(v) = before {
                            replaced.push((op.table, op.id.clone(), v));
                        }
                        if let Some(img) = local_before {
                            seen_before.push((op.table, op.id.clone(), img));
                        }
                    }
                    applied.push(json!({"table": op.table, "id": op.id, "kind": op.kind, "rows": n}));
                }
                Err(e) if !connection_lost(&e, c) => {
                    // A data error (FK, deadlock or lock timeout with the down path or
                    // the apply...): this statement is undone, the transaction goes on.
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
        Ok::<_, tokio_postgres::Error>((changes, images, at, applied, replaced, seen_before))
    }
    .await;
    let (changes, images, at, applied, replaced, seen_before) = match prepared {
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
            history.push(json!({"kind": "ambiguous_commit", "seq": seq, "writer": writer, "xid": xid, "status": status, "at": now()}));
            status.as_deref() == Some("committed")
        }
        Err(_) => false,
    };
    if !committed {
        return if lost { TxnResult::Lost } else { TxnResult::Aborted };
    }
    history.push(json!({
        "kind": "write", "seq": seq, "writer": writer, "xid": xid, "now": begun, "clock_timestamp": at, "changes": changes,
        "ops": applied, "replaced": replaced,
        "images": images.iter().map(|(t, id, img)| json!({"table": t, "id": id, "image": img.as_ref().map(abbreviate)})).collect::<Vec<_>>(),
    }));
    TxnResult::Committed(Committed { seq, writer, xid, begun, changes, images, replaced, seen_before })
}

/// The cloud app's view of the version its change of `op`'s row replaces:
/// the row is locked the way `centrovision_sync_apply` locks it (the row FOR
/// UPDATE, then the per-key advisory lock), so no clinic version can land
/// between this read and the write. None: the row has no version yet.
async fn version_before(c: &Client, op: &Op) -> Result<Option<SeenVersion>, tokio_postgres::Error> {
    c.execute(&format!("SELECT 1 FROM {} WHERE id = $1::text::uuid FOR UPDATE", op.table), &[&op.id]).await?;
    let key = format!("public.{}:{}", op.table, op.id);
    c.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&key]).await?;
    let row = c
        .query_opt(
            "SELECT writer, coalesce(to_jsonb(stamp) #>> '{}', ''), deleted FROM centrovision_sync.row_version
             WHERE schema_name = 'public' AND table_name = $1 AND pk = $2",
            &[&op.table, &op.id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// The workload's state: its random source, its records, the commit counter.
struct Workload {
    rng: StdRng,
    out: Outcome,
    seq: usize,
    history: History,
}

impl Workload {
    fn record(&mut self, r: TxnResult) -> Option<usize> {
        match r {
            TxnResult::Committed(c) => {
                let seq = c.seq;
                self.out.committed.push(c);
                Some(seq)
            }
            _ => {
                self.out.rolled_back += 1;
                None
            }
        }
    }

    /// One transaction from BEGIN to COMMIT; run again (up to 5 times) when
    /// a restart cut it off. The commit's `seq`, if it committed.
    async fn run(&mut self, conn: &mut Conn, writer: Writer, ops: &[Op]) -> Option<usize> {
        self.out.attempted += 1;
        let mut tries = 0;
        loop {
            tries += 1;
            let r = match begin(conn).await {
                Ok(b) => {
                    self.seq += 1;
                    finish(conn, b, writer, ops, self.seq, &self.history).await
                }
                Err(r) => r,
            };
            match r {
                TxnResult::Lost if tries < 5 => self.out.retried += 1,
                r => return self.record(r),
            }
        }
    }

    /// X begins on `x` (its stamp is fixed), Y runs and commits on `y`, then
    /// X runs and commits: the later commit carries the older stamp.
    async fn overlapping(&mut self, x: &mut Conn, y: &mut Conn, writer: Writer, ops_x: &[Op], ops_y: &[Op]) {
        match begin(x).await {
            Ok(b) => {
                self.out.attempted += 1;
                let y_seq = self.run(y, writer, ops_y).await;
                self.seq += 1;
                let r = finish(x, b, writer, ops_x, self.seq, &self.history).await;
                if matches!(r, TxnResult::Lost) {
                    // Cut off by a restart: run X again on its own.
                    self.out.retried += 1;
                    self.out.attempted -= 1;
                    self.run(x, writer, ops_x).await;
                } else if self.record(r).is_some() && y_seq.is_some() {
                    self.out.overlapped += 1;
                }
            }
            Err(_) => {
                self.run(y, writer, ops_y).await;
                self.run(x, writer, ops_x).await;
            }
        }
    }
}

/// Writes from the three writers, one transaction at a time (or an
/// overlapping pair at one clinic), until `stop`.
async fn workload(clinics: [TestDb; 2], upstream: TestDb, seed: u64, mut stop: watch::Receiver<bool>, history: History) -> Outcome {
    let mut w = Workload { rng: StdRng::seed_from_u64(seed), out: Outcome::default(), seq: 0, history };
    let mut conns: Vec<[Conn; 2]> = clinics.iter().map(|db| [Conn::new(db.clone()), Conn::new(db.clone())]).collect();
    let mut cloud = Conn::new(upstream);
    while !*stop.borrow() {
        let roll = w.rng.random_range(0..100);
        let writer = match roll {
            0..35 => Writer::A,
            35..70 => Writer::B,
            _ => Writer::Cloud,
        };
        let ops = gen_ops(&mut w.rng);
        if writer.is_clinic() {
            let [c0, c1] = &mut conns[writer.idx()];
            let (x, y) = if w.rng.random_bool(0.5) { (c0, c1) } else { (c1, c0) };
            if w.rng.random_bool(0.35) {
                let ops_y = gen_ops_overlapping(&mut w.rng, &ops);
                w.overlapping(x, y, writer, &ops, &ops_y).await;
            } else {
                w.run(x, writer, &ops).await;
            }
        } else {
            w.run(&mut cloud, writer, &ops).await;
        }
        let pause = Duration::from_millis(w.rng.random_range(5..40));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    // The finale: the last versions of a few rows come from an overlapping
    // pair of updates of that row at each clinic (the one committed last
    // carries the older stamp), so the final states the oracle checks turn
    // on rule 1 (one writer: commit order) as well as on rule 2.
    for _ in 0..FINALE_ROWS {
        let t = w.rng.random_range(0..WRITTEN.len());
        let i = w.rng.random_range(0..POOL[t]);
        for writer in [Writer::A, Writer::B] {
            let ops_x = vec![gen_op_at(&mut w.rng, t, i)];
            let ops_y = vec![gen_op_at(&mut w.rng, t, i)];
            let [x, y] = &mut conns[writer.idx()];
            w.overlapping(x, y, writer, &ops_x, &ops_y).await;
        }
    }
    let mut out = w.out;
    let h = w.history.0.lock().unwrap();
    out.ambiguous_committed = h.iter().filter(|v| v["kind"] == "ambiguous_commit" && v["status"] == "committed").count();
    out.ambiguous_aborted = h.iter().filter(|v| v["kind"] == "ambiguous_commit" && v["status"] != "committed").count();
    out
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// One writer's version of one row.
#[derive(Debug, Clone)]
struct Version {
    seq: usize,
    /// Conflict stamp, microseconds since the epoch.
    stamp: i64,
    deleted: bool,
    image: Option<Value>,
}

/// A timestamptz as JSON text (`to_jsonb(ts) #>> '{}'`) in microseconds.
fn micros(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("timestamp {text:?}: {e}")).timestamp_micros()
}

/// Does `v` (of writer `vw`) beat the current version `c` (of writer `cw`)
/// between different writers? Later stamp; on equal stamps the delete, then
/// the higher writer id in byte order.
fn beats(v: &Version, vw: &str, c: &Version, cw: &str) -> bool {
    (v.stamp, v.deleted, vw.as_bytes()) > (c.stamp, c.deleted, cw.as_bytes())
}

/// Every version a row can end with under the rule, as (writer index,
/// position in that writer's sequence); None: no version at all. `seqs`
/// holds each writer's versions in its commit order, `names` the writer ids.
fn reachable(seqs: &[Vec<Version>; 3], names: &[String; 3]) -> HashSet<Option<(usize, usize)>> {
    type State = ([usize; 3], Option<(usize, usize)>);
    const CLOUD: usize = Writer::Cloud as usize;
    // Real time orders some arrivals for certain: a cloud version committed
    // before a clinic's local commit was upstream before that clinic version
    // could arrive. `needs[w][i]`: the cloud versions that precede version i of
    // clinic w so.
    let needs: Vec<Vec<usize>> =
        (0..3).map(|w| seqs[w].iter().map(|v| seqs[CLOUD].iter().filter(|c| c.seq < v.seq).count()).collect()).collect();
    let mut seen: HashSet<State> = HashSet::new();
    let mut stack: Vec<State> = vec![([0; 3], None)];
    let mut ends = HashSet::new();
    while let Some(state) = stack.pop() {
        if !seen.insert(state) {
            continue;
        }
        let (at, cur) = state;
        if (0..3).all(|w| at[w] == seqs[w].len()) {
            ends.insert(cur);
            continue;
        }
        for w in 0..3 {
            let Some(v) = seqs[w].get(at[w]) else { continue };
            if w != CLOUD && at[CLOUD] < needs[w][at[w]] {
                continue;
            }
            let lands = match cur {
                None => true,
                Some((cw, ci)) => cw == w || WRITERS[w] == Writer::Cloud || beats(v, &names[w], &seqs[cw][ci], &names[cw]),
            };
            let mut next = at;
            next[w] += 1;
            stack.push((next, if lands { Some((w, at[w])) } else { cur }));
        }
    }
    ends
}

/// What upstream holds for a row at the end: its version record and image.
#[derive(Debug)]
struct Final {
    writer: String,
    stamp: i64,
    deleted: bool,
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

const APPLY: &str = "/rest/v1/rpc/centrovision_sync_apply";

/// A clinic's service process, restartable.
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
    let c = local.journal().try_connect().await.ok()?;
    c.query_one("SELECT count(*) FROM _sync_pending WHERE synced", &[]).await.ok().map(|r| r.get(0))
}

/// Points a clinic's config at its proxy instead of upstream (or its stand-in).
fn through_proxy(pair: &Pair, proxy: &Proxy) {
    let config = std::fs::read_to_string(pair.config_path()).unwrap();
    let config = match pair.mode {
        Mode::Postgres => config.replace(
            &format!("host={} port={} ", pair.upstream.host(), pair.upstream.port()),
            &format!("host=127.0.0.1 port={} ", proxy.port()),
        ),
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => config.replace(&pair.standin().url(), &format!("http://{}", proxy.addr())),
    }
    .replace("[supabase]\n", "[supabase]\nrequest_timeout_seconds = 10\nconnect_timeout_seconds = 5\n");
    assert!(config.contains(&proxy.port().to_string()), "config not pointed at the proxy:\n{config}");
    std::fs::write(pair.config_path(), config).unwrap();
}

fn proxy_target(pair: &Pair) -> std::net::SocketAddr {
    match pair.mode {
        Mode::Postgres => format!("127.0.0.1:{}", pair.upstream.port()).parse().unwrap(),
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => pair.standin().url().trim_start_matches("http://").parse().unwrap(),
    }
}

/// `once` at one clinic after the faults, retried up to 5 times; false if
/// it never succeeded. Its stderr goes to `log`.
async fn final_once(pair: &Pair, name: &str, history: &History, log: &mut String) -> Result<(), String> {
    let mut reruns = 0;
    let mut last_err = String::new();
    for attempt in 1..=5 {
        let out = pair.exec(&["once"], &[]).await;
        log.push_str(&format!("==== {name}: once attempt {attempt} ({})\n", out.status));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            let again = workarounds().iter().any(|w| matches!(w, Workaround::OnceAgain { .. }));
            let left: i64 = pair
                .local
                .journal()
                .connect()
                .await
                .query_one("SELECT count(*) FROM _sync_pending WHERE NOT synced AND parked_at IS NULL", &[])
                .await
                .unwrap()
                .get(0);
            if left > 0 && again && reruns < 2 {
                reruns += 1;
                history.push(json!({"kind": "once_left_rows_unsynced", "clinic": name, "rows": left, "at": now()}));
                continue;
            }
            return Ok(());
        }
        last_err = tail(&String::from_utf8_lossy(&out.stderr), 5);
        history.push(json!({"kind": "once_failed", "clinic": name, "attempt": attempt, "at": now(), "stderr": last_err}));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(last_err)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

async fn chaos(mode: Mode) {
    let seed = seed();
    let faults = fault_count();
    let mode_name = match mode {
        Mode::Postgres => "postgres",
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => "rest",
    };
    let release = if cfg!(debug_assertions) { "" } else { " --release" };
    say(&format!(
        "chaos {mode_name}: CHAOS_SEED={seed} CHAOS_FAULTS={faults} \
         (reproduce: CHAOS_SEED={seed} CHAOS_FAULTS={faults} cargo test{release} --test it chaos::{mode_name} -- --exact --nocapture)"
    ));
    let started = Instant::now();
    let history = History::default();
    history.push(json!({"kind": "start", "seed": seed, "mode": mode_name, "faults": faults, "at": now()}));

    let clusters: Vec<Arc<Cluster>> = (0..2).map(|_| Arc::new(Cluster::start(ClusterOptions::default()))).collect();
    let upstream_cluster = Arc::new(Cluster::start(ClusterOptions::default()));
    let upstream_db = upstream_cluster.create_database(&format!("chaos_{mode_name}_u")).await;
    let a_db = clusters[0].create_database(&format!("chaos_{mode_name}_a")).await;
    let b_db = clusters[1].create_database(&format!("chaos_{mode_name}_b")).await;
    let mut a = Pair::on(a_db.clone(), upstream_db.clone(), mode).await;
    let mut b = Pair::joining_on(b_db.clone(), &a).await;
    for (p, id) in [(&mut a, CLINIC_IDS[0]), (&mut b, CLINIC_IDS[1])] {
        p.sync_extra.push_str(&format!("clinic_id = \"{id}\"\n"));
        p.write_config();
    }
    let pairs = [a, b];
    let locals = [a_db, b_db];

    // Each service reaches upstream only through its own proxy.
    let mut proxies = Vec::new();
    for p in &pairs {
        let proxy = Proxy::start(proxy_target(p)).await;
        through_proxy(p, &proxy);
        proxies.push(proxy);
    }
    for w in workarounds() {
        say(&format!("chaos {mode_name}: stepping around known bug {} (CHAOS_WORKAROUNDS=0 to disable)", w.bug()));
        history.push(json!({"kind": "workaround", "bug": w.bug(), "what": format!("{w:?}")}));
        if let Workaround::Sql { sql, .. } = w {
            for db in &locals {
                db.connect().await.batch_execute(sql).await.unwrap();
            }
        }
    }
    for p in &pairs {
        p.init().await;
    }

    let mut services: Vec<Service<'_>> = pairs.iter().map(|pair| Service { pair, running: None, starts: 0 }).collect();
    for s in &mut services {
        s.start();
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let work = tokio::spawn(workload(locals.clone(), upstream_db.clone(), seed, stop_rx, history.clone()));

    // ---- faults ---------------------------------------------------------
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut stalls = 0usize;
    let mut last_synced = 0i64;
    for n in 1..=faults {
        let roll = rng.random_range(0..100);
        let clinic = rng.random_range(0..2);
        let rest = mode.is_rest();
        let at = now();
        let t0 = Instant::now();
        let (kind, detail): (&'static str, Value) = match roll {
            0..=14 => {
                services[clinic].kill();
                let down = Duration::from_millis(rng.random_range(0..1500));
                tokio::time::sleep(down).await;
                services[clinic].start();
                ("kill_service", json!({"down_ms": down.as_millis() as u64}))
            }
            15..=26 => {
                let hard = rng.random_bool(0.25);
                restart_cluster(&clusters[clinic], hard).await;
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
                proxies[clinic].set(fault);
                tokio::time::sleep(hold).await;
                proxies[clinic].set(NetFault::Pass);
                ("network", json!({"fault": format!("{fault:?}"), "hold_ms": hold.as_millis() as u64}))
            }
            _ => {
                let s = pairs[clinic].standin();
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
        let target = if kind == "restart_upstream" { "upstream" } else { CLINIC_IDS[clinic] };
        *kinds.entry(format!("{kind}@{target}")).or_default() += 1;
        history.push(json!({"kind": "fault", "n": n, "fault": kind, "target": target, "detail": detail, "at": at, "healed_at": now(),
                            "took_ms": t0.elapsed().as_millis() as u64}));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        // Every few faults, give the services a moment to make progress, so
        // faults keep landing on services that are mid-work rather than
        // asleep in a long backoff. Not an assertion: a note if they stall.
        if n % 10 == 0 {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let mut s = 0;
                for db in &locals {
                    s += synced_rows(db).await.unwrap_or(0);
                }
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
    for p in &proxies {
        p.set(NetFault::Pass);
    }
    for p in &pairs {
        if let Some(s) = &p.rest {
            s.faults().clear();
        }
    }
    let _ = stop_tx.send(true);
    let outcome = work.await.expect("the workload task panicked");
    let mut synced_by_run = Vec::new();
    for db in &locals {
        synced_by_run.push(synced_rows(db).await.unwrap_or(0));
    }
    let mut stop_took = Vec::new();
    for s in &mut services {
        stop_took.push(s.terminate(Duration::from_secs(60)).await);
    }
    history.push(json!({"kind": "healed", "at": now(),
                        "sigterm_exit_ms": stop_took.iter().map(|t| t.map(|d| d.as_millis() as u64)).collect::<Vec<_>>()}));

    let mut failures: Vec<String> = Vec::new();
    let once_started = now();
    let mut once_log = String::new();
    // A pushes; B pushes (and downloads A's); A downloads B's and the winners re-emitted for it; B likewise.
    for c in [0, 1, 0, 1] {
        if let Err(e) = final_once(&pairs[c], CLINIC_IDS[c], &history, &mut once_log).await {
            failures.push(format!("`once` at {} failed 5 times after healing; last error:\n{e}", CLINIC_IDS[c]));
        }
    }

    // ---- checks ---------------------------------------------------------
    let u = upstream_db.connect().await;
    u.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let cloud_name: String = u.query_one("SELECT centrovision_sync.other_writer()", &[]).await.unwrap().get(0);
    let names: [String; 3] = [CLINIC_IDS[0].to_string(), CLINIC_IDS[1].to_string(), cloud_name];

    // 1. All three databases identical.
    for (c, db) in locals.iter().enumerate() {
        for t in TABLES {
            let l = Pair::rows(db, t).await;
            let up = Pair::rows(&upstream_db, t).await;
            if l != up {
                failures.push(format!("table {t} differs between {} and upstream:\n{}", CLINIC_IDS[c], support::sync::diff_rows(&l, &up)));
            }
        }
    }

    // The clinics' journals: commit time and row count per transaction.
    let mut journals: Vec<HashMap<i64, (i64, String)>> = Vec::new();
    for db in &locals {
        let l = db.journal().connect().await;
        l.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        journals.push(
            l.query(
                "SELECT xid, count(*), coalesce(to_jsonb(min(commit_ts)) #>> '{}', '') FROM _sync_pending WHERE xid IS NOT NULL GROUP BY xid",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect(),
        );
    }

    // 2. Every row ends in a state the rule can reach.
    let mut versions: HashMap<(&'static str, String), [Vec<Version>; 3]> = HashMap::new();
    let mut unplaced = Vec::new();
    for w in &outcome.committed {
        for (t, id, img) in &w.images {
            let stamp = match (img, w.writer) {
                (Some(img), _) => img["updated_at"].as_str().map(micros),
                (None, Writer::Cloud) => Some(micros(&w.begun)),
                (None, clinic) => {
                    journals[clinic.idx()].get(&(w.xid & 0xffff_ffff)).filter(|(_, ts)| !ts.is_empty()).map(|(_, ts)| micros(ts))
                }
            };
            let Some(stamp) = stamp else {
                unplaced.push(format!("{t} {id} (write #{}, {:?})", w.seq, w.writer));
                continue;
            };
            let v = Version { seq: w.seq, stamp, deleted: img.is_none(), image: img.clone() };
            versions.entry((t, id.clone())).or_default()[w.writer.idx()].push(v);
        }
    }
    if !unplaced.is_empty() {
        failures.push(format!(
            "{} versions without a stamp (a clinic delete with no journal row?): {}",
            unplaced.len(),
            unplaced.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    let conflicts: Vec<(String, String, String, i64, bool)> = u
        .query(
            "SELECT table_name, pk, loser_writer, coalesce(to_jsonb(loser_stamp) #>> '{}', ''), loser_deleted FROM centrovision_sync.conflict",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let ts: String = r.get(3);
            (r.get(0), r.get(1), r.get(2), if ts.is_empty() { i64::MIN } else { micros(&ts) }, r.get(4))
        })
        .collect();
    let logged: HashSet<(&str, &str, &str, i64, bool)> =
        conflicts.iter().map(|(t, k, w, s, d)| (t.as_str(), k.as_str(), w.as_str(), *s, *d)).collect();
    let mut wrong = 0;
    let mut unlogged = Vec::new();
    let (mut checked_log, mut exempt_cloud, mut exempt_tombstone, mut exempt_downloaded) = (0usize, 0usize, 0usize, 0usize);
    // (table, key, writer, stamp, deleted) of every version a cloud write replaced.
    let replaced_by_cloud: HashSet<(&str, &str, &str, i64, bool)> = outcome
        .committed
        .iter()
        .flat_map(|c| c.replaced.iter())
        .filter_map(|(t, id, v)| v.as_ref().filter(|v| !v.1.is_empty()).map(|(w, ts, d)| (*t, id.as_str(), w.as_str(), micros(ts), *d)))
        .collect();
    // (table, key, image) of every row a clinic changed as it had downloaded it, by clinic.
    let seen_by_clinic: Vec<(usize, &str, &str, String)> = outcome
        .committed
        .iter()
        .filter(|c| c.writer != Writer::Cloud)
        .flat_map(|c| {
            c.seen_before.iter().filter_map(move |(t, id, img)| img.as_ref().map(|v| (c.writer.idx(), *t, id.as_str(), v.to_string())))
        })
        .collect();
    // (table, key) of every row a clinic changed while it had the row absent (it had the delete).
    let absent_at_clinic: Vec<(usize, &str, &str)> = outcome
        .committed
        .iter()
        .filter(|c| c.writer != Writer::Cloud)
        .flat_map(|c| c.seen_before.iter().filter(|(_, _, img)| img.is_none()).map(move |(t, id, _)| (c.writer.idx(), *t, id.as_str())))
        .collect();
    let empty: [Vec<Version>; 3] = Default::default();
    for (ti, t) in WRITTEN.iter().enumerate() {
        for i in 0..POOL[ti] {
            let id = pool_id(ti, i);
            let actual: Option<Value> = u
                .query_opt(&format!("SELECT to_jsonb(x)::text FROM {t} x WHERE id = $1::text::uuid"), &[&id])
                .await
                .unwrap()
                .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap());
            let fin: Option<Final> = u
                .query_opt(
                    "SELECT writer, coalesce(to_jsonb(stamp) #>> '{}', ''), deleted FROM centrovision_sync.row_version
                     WHERE schema_name = 'public' AND table_name = $1 AND pk = $2",
                    &[t, &id],
                )
                .await
                .unwrap()
                .map(|r| Final { writer: r.get(0), stamp: micros(r.get::<_, &str>(1)), deleted: r.get(2) });
            let seqs = versions.get(&(*t, id.clone())).unwrap_or(&empty);
            let is_final = |w: usize, v: &Version| {
                fin.as_ref().is_some_and(|f| f.writer == names[w] && f.stamp == v.stamp && f.deleted == v.deleted) && actual == v.image
            };
            let ends = reachable(seqs, &names);
            let ok = ends.iter().any(|e| match e {
                None => fin.is_none() && actual.is_none(),
                Some((w, i)) => is_final(*w, &seqs[*w][*i]),
            });
            if !ok {
                wrong += 1;
                if wrong <= 5 {
                    let mut cands: Vec<String> = ends
                        .iter()
                        .map(|e| match e {
                            None => "absent".to_string(),
                            Some((w, i)) => {
                                let v = &seqs[*w][*i];
                                format!("{} #{} stamp {} deleted {}", names[*w], v.seq, v.stamp, v.deleted)
                            }
                        })
                        .collect();
                    cands.sort();
                    let columns = match (&fin, ends.iter().flatten().next()) {
                        (_, Some((w, i))) => diff_columns(actual.as_ref(), seqs[*w][*i].image.as_ref()),
                        _ => String::new(),
                    };
                    failures.push(format!(
                        "{t} {id}: ends as {fin:?} (row {}), which no interleaving under the rule reaches; reachable: {}{columns}",
                        if actual.is_some() { "present" } else { "absent" },
                        cands.join(", ")
                    ));
                }
            }
            // 3. Each writer's last version that is not the final one is logged as a loser.
            for w in 0..3 {
                let Some(last) = seqs[w].last() else { continue };
                if is_final(w, last) {
                    continue;
                }
                if replaced_by_cloud.contains(&(*t, id.as_str(), names[w].as_str(), last.stamp, last.deleted)) {
                    exempt_cloud += 1;
                    continue;
                }
                if last.deleted && (0..3).any(|o| o != w && seqs[o].iter().any(|v| v.deleted)) {
                    exempt_tombstone += 1;
                    continue;
                }
                if let Some(img) = last.image.as_ref().map(Value::to_string)
                    && seen_by_clinic.iter().any(|(c, st, sid, simg)| *c != w && st == t && *sid == id.as_str() && *simg == img)
                {
                    exempt_downloaded += 1;
                    continue;
                }
                if last.deleted && absent_at_clinic.iter().any(|(c, st, sid)| *c != w && st == t && *sid == id.as_str()) {
                    exempt_downloaded += 1;
                    continue;
                }
                checked_log += 1;
                if !logged.contains(&(*t, id.as_str(), names[w].as_str(), last.stamp, last.deleted)) {
                    unlogged.push(format!(
                        "{t} {id}: {}'s last version (write #{}, stamp {}, deleted {}) was overwritten but is not in the conflict log",
                        names[w], last.seq, last.stamp, last.deleted
                    ));
                }
            }
        }
    }
    if wrong > 5 {
        failures.push(format!("... {wrong} rows in all end in a state the rule cannot reach"));
    }
    if !unlogged.is_empty() {
        failures.push(format!(
            "{} overwritten versions missing from the conflict log:\n  {}",
            unlogged.len(),
            unlogged.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ")
        ));
    }

    // 4. Each clinic's journal: no duplicates, each local transaction exactly once.
    for (c, db) in locals.iter().enumerate() {
        let name = CLINIC_IDS[c];
        let l = db.journal().connect().await;
        let dup: i64 = l
            .query_one("SELECT count(*) - count(DISTINCT (commit_lsn, ordinal)) FROM _sync_pending WHERE commit_lsn IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        if dup != 0 {
            failures.push(format!("{name}: {dup} duplicate (commit_lsn, ordinal) journal rows"));
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
            failures.push(format!("{name}: {split} transactions journaled under more than one commit LSN"));
        }
        let journal = &journals[c];
        let mut expected_xids: HashMap<i64, i64> = HashMap::new();
        for w in outcome.committed.iter().filter(|w| w.writer == WRITERS[c]) {
            *expected_xids.entry(w.xid & 0xffff_ffff).or_default() += w.changes as i64;
        }
        let mut miscounted = Vec::new();
        for (xid, want) in &expected_xids {
            let got = journal.get(xid).map_or(0, |j| j.0);
            if got != *want {
                miscounted.push(format!("xid {xid}: {got} journal rows for {want} row changes"));
            }
        }
        let foreign: Vec<&i64> = journal.keys().filter(|x| !expected_xids.contains_key(x)).collect();
        if !miscounted.is_empty() {
            failures.push(format!(
                "{name}: {} local transactions not journaled exactly once: {}",
                miscounted.len(),
                miscounted.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        if !foreign.is_empty() {
            failures.push(format!(
                "{name}: journal holds rows of {} transactions the workload did not commit there (echo of down-path writes?): xids {:?}",
                foreign.len(),
                foreign.iter().take(5).collect::<Vec<_>>()
            ));
        }

        // 5. Nothing parked or left behind.
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
            let capture: String =
                l.query_one("SELECT coalesce(string_agg(t::text, ' '), '') FROM _sync_capture t", &[]).await.unwrap().get(0);
            history.push(
                json!({"kind": "unsynced_after_once", "clinic": name, "once_started": once_started, "rows": detail, "capture": capture}),
            );
            failures.push(format!(
                "{name}: {unsynced} journal rows unsynced and {parked} parked after the final once (started {once_started}); errors: {:?}\n{}\n_sync_capture: {capture}",
                left.get::<_, Option<String>>(2),
                tail(&detail, 10)
            ));
        }

        // 6. A clean stop.
        if stop_took[c].is_none() {
            failures.push(format!("{name}: `run` did not exit within 60 s of SIGTERM (it had to be SIGKILLed)"));
        }
    }

    let per_writer: Vec<String> =
        WRITERS.iter().map(|w| format!("{} {}", names[w.idx()], outcome.committed.iter().filter(|c| c.writer == *w).count())).collect();
    let summary = format!(
        "chaos {mode_name} seed {seed}: {faults} faults {kinds:?} in {:.0?}; workload {} txns attempted, {} committed \
         ({}), {} overlapping pairs committed out of stamp order, {} rolled back, {} retried after a lost connection, \
         ambiguous commits {} committed / {} aborted; {} conflicts logged; overwritten last versions: {checked_log} checked in \
         the conflict log, {exempt_cloud} exempt (replaced by a cloud write), {exempt_tombstone} exempt (delete vs. tombstone), \
         {exempt_downloaded} exempt (a clinic edited it as downloaded); \
         service starts {:?}; journal rows delivered by `run` before the final once {:?}; {stalls} settle points without progress; \
         proxies {:?}",
        started.elapsed(),
        outcome.attempted,
        outcome.committed.len(),
        per_writer.join(", "),
        outcome.overlapped,
        outcome.rolled_back,
        outcome.retried,
        outcome.ambiguous_committed,
        outcome.ambiguous_aborted,
        conflicts.len(),
        services.iter().map(|s| s.starts).collect::<Vec<_>>(),
        synced_by_run,
        proxies.iter().map(|p| p.stats()).collect::<Vec<_>>(),
    );
    say(&summary);
    history.push(json!({"kind": "end", "at": now(), "summary": summary, "failures": failures}));

    let keep = std::env::var_os("CHAOS_KEEP_HISTORY").is_some_and(|v| v != "0");
    if !failures.is_empty() || keep {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("chaos-history-{mode_name}-{seed}.jsonl"));
        history.write(&path);
        let log_path = dir.join(format!("chaos-service-{mode_name}-{seed}.log"));
        let logs: Vec<String> = pairs.iter().zip(CLINIC_IDS).map(|(p, n)| format!("==== {n}: run\n{}", p.run_log())).collect();
        let _ = std::fs::write(&log_path, format!("{}\n==== the final `once`s\n{once_log}", logs.join("\n")));
        say(&format!("chaos {mode_name} seed {seed}: history in {}, service logs in {}", path.display(), log_path.display()));
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
        (Some(_), None) => ": the row exists but the version deleted it".into(),
        (Some(a), Some(w)) => {
            let mut out = String::new();
            if let (Some(a), Some(w)) = (a.as_object(), w.as_object()) {
                for (k, wv) in w {
                    let av = a.get(k).unwrap_or(&Value::Null);
                    if av != wv {
                        out.push_str(&format!("\n    {k}: is {} but a reachable version has {}", abbreviate(av), abbreviate(wv)));
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
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => pair.standin().url().trim_start_matches("http://").parse().unwrap(),
    };
    let proxy = Proxy::start(target).await;
    let config = std::fs::read_to_string(pair.config_path()).unwrap();
    let config = match mode {
        Mode::Postgres => config.replace(
            &format!("host={} port={} ", pair.upstream.host(), pair.upstream.port()),
            &format!("host=127.0.0.1 port={} ", proxy.port()),
        ),
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => config.replace(&pair.standin().url(), &format!("http://{}", proxy.addr())),
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
        let n: i64 = pair.local.journal().connect().await.query_one("SELECT count(*) FROM _sync_pending", &[]).await.unwrap().get(0);
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
/// rows marked delivered one by one above the pusher's cursor, as a journal
/// moved from an old installation looks), which makes the read straddle the
/// journal commit almost every time.
async fn once_delivers_everything_committed_before_it_started(mode: Mode) {
    let pair = Pair::new("once_race", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    let journal = pair.local.journal().connect().await;
    journal
        .batch_execute(
            "INSERT INTO _sync_journal (table_name, record_id, operation, synced, synced_at)
             SELECT 'services', 'old-' || g, 'INSERT', true, now() FROM generate_series(1, 2000000) g;
             ANALYZE _sync_journal;",
        )
        .await
        .unwrap();
    for round in 0..3 {
        local.batch_execute(&format!("INSERT INTO services (name) VALUES ('round {round}')")).await.unwrap();
        pair.once().await;
        let unsynced: i64 = journal.query_one("SELECT count(*) FROM _sync_pending WHERE NOT synced", &[]).await.unwrap().get(0);
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

/// Found by the two-clinic chaos run (`CHAOS_SEED=15511237522683564670` and
/// `2333926213676121829`, postgres mode): `patients.metadata` (jsonb) held
/// `[1, 2.50, "x"]` at the clinics and `[1, 2.5, "x"]` upstream. An UPDATE
/// that leaves a TOASTed column untouched is journaled with that column
/// filled in by capture, which re-serialized the whole row image through
/// `serde_json::Value`: every JSON number in a json/jsonb column was
/// rewritten as an f64 (2.50 became 2.5; a number beyond f64 precision
/// would change value), and that image went upstream. The pusher's merge
/// of partial images in one batch did the same.
async fn a_toast_fill_keeps_json_numbers_as_written(mode: Mode) {
    const ID: &str = "c4a05000-0000-4000-8000-00000000a002";
    let pair = Pair::new("toast_json_numbers", mode).await;
    pair.init().await;
    let local = pair.local.connect().await;
    local
        .batch_execute(&format!(
            "INSERT INTO patients (id, full_name, metadata, notes)
             VALUES ('{ID}', 'Ana', '{{\"l\": [1, 2.50, \"x\"], \"big\": 12345678901234567890123}}',
                     (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g))"
        ))
        .await
        .unwrap();
    pair.once().await;
    // Only the phone changes: the WAL does not carry the TOASTed notes.
    local.batch_execute(&format!("UPDATE patients SET phone = '+56 9 5555' WHERE id = '{ID}'")).await.unwrap();
    pair.once().await;
    let up = pair.upstream.connect().await;
    let metadata: String = up.query_one(&format!("SELECT metadata::text FROM patients WHERE id = '{ID}'"), &[]).await.unwrap().get(0);
    assert_eq!(metadata, r#"{"l": [1, 2.50, "x"], "big": 12345678901234567890123}"#, "the JSON numbers reached upstream rewritten");
    pair.assert_converged().await;
}

mod a_toast_fill_keeps_json_numbers_as_written {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_toast_fill_keeps_json_numbers_as_written(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::a_toast_fill_keeps_json_numbers_as_written(crate::support::sync::Mode::Rest).await
    }
}

/// The oracle itself, on hand-made version sequences (no database).
mod the_oracle {
    use super::{Version, reachable};
    use std::collections::HashSet;

    fn v(seq: usize, stamp: i64, deleted: bool) -> Version {
        Version { seq, stamp, deleted, image: None }
    }

    fn names() -> [String; 3] {
        ["clinic-a".into(), "clinic-b".into(), "cloud:postgres".into()]
    }

    fn ends(a: Vec<Version>, b: Vec<Version>, cloud: Vec<Version>) -> HashSet<Option<(usize, usize)>> {
        reachable(&[a, b, cloud], &names())
    }

    #[test]
    fn a_row_never_written_ends_absent() {
        assert_eq!(ends(vec![], vec![], vec![]), HashSet::from([None]));
    }

    #[test]
    fn an_older_stamp_from_another_clinic_never_ends_a_row() {
        assert_eq!(ends(vec![v(1, 10, false)], vec![v(2, 5, false)], vec![]), HashSet::from([Some((0, 0))]));
    }

    #[test]
    fn a_clinics_later_commit_ends_the_row_though_its_stamp_is_older() {
        assert_eq!(ends(vec![v(1, 10, false), v(2, 5, false)], vec![], vec![]), HashSet::from([Some((0, 1))]));
        // Another clinic's version stamped between the two loses to the first and is
        // replaced by it, but beats the second if it arrives after both.
        let e = ends(vec![v(1, 10, false), v(3, 5, false)], vec![v(2, 7, false)], vec![]);
        assert_eq!(e, HashSet::from([Some((0, 1)), Some((1, 0))]));
    }

    #[test]
    fn a_cloud_write_lands_whatever_its_stamp_but_a_later_arriving_newer_clinic_version_beats_it() {
        let e = ends(vec![v(1, 10, false)], vec![], vec![v(2, 5, false)]);
        assert_eq!(e, HashSet::from([Some((0, 0)), Some((2, 0))]));
    }

    #[test]
    fn a_cloud_write_committed_before_a_clinic_commit_was_upstream_before_that_version_arrived() {
        // The cloud's version (stamp 10) committed before the clinic's (stamp 12)
        // committed locally: the clinic's arrives later and wins.
        assert_eq!(ends(vec![v(2, 12, false)], vec![], vec![v(1, 10, false)]), HashSet::from([Some((0, 0))]));
    }

    #[test]
    fn on_equal_stamps_the_delete_wins_then_the_higher_writer_id() {
        assert_eq!(ends(vec![v(1, 10, true)], vec![v(2, 10, false)], vec![]), HashSet::from([Some((0, 0))]));
        assert_eq!(ends(vec![v(1, 10, false)], vec![v(2, 10, false)], vec![]), HashSet::from([Some((1, 0))]));
    }
}

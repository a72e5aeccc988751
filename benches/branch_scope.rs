//! Branch scoping's initial download (issue 15, src/scope.rs): ten branches
//! upstream; a fresh clinic scoped to one branch (`[sync] branch_ids`) against
//! a fresh unscoped clinic, same upstream, same run. Reports rows downloaded
//! (rows in the local synced tables after `once`) and the time of `once`
//! (start-up + one down cycle from a fresh cursor; nothing to push).
//!
//! ```text
//! cargo bench --bench branch_scope                # 1,000 patients per branch (50,000 rows upstream)
//! cargo bench --bench branch_scope -- --per-branch 200
//! ```

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, reason = "the benchmark uses part of the kit; tests/it exercises the rest")]
mod support;

use std::time::{Duration, Instant};

use support::sync::{Mode, Pair, count};

const BRANCHES: usize = 10;

fn branch(b: usize) -> String {
    format!("00000000-0000-0000-0000-{b:012}")
}

/// Per branch: `k` patients, each with an appointment and an invoice of two items.
fn seed_sql(k: usize) -> String {
    let mut s = String::from("BEGIN;\nINSERT INTO services (id, name) VALUES ('00000000-0000-0000-0000-00000000005e', 'consulta');\n");
    for b in 1..=BRANCHES {
        s.push_str(&format!(
            "INSERT INTO branches (id, name) VALUES ('{br}', 'branch {b}');
             INSERT INTO patients (id, branch_id, full_name, notes)
               SELECT md5('p{b}-' || i)::uuid, '{br}', 'patient ' || i, repeat('x', 200) FROM generate_series(1, {k}) i;
             INSERT INTO appointments (id, branch_id, patient_id, service_id, starts_at, reason)
               SELECT md5('a{b}-' || i)::uuid, '{br}', md5('p{b}-' || i)::uuid, '00000000-0000-0000-0000-00000000005e', now(), 'control'
               FROM generate_series(1, {k}) i;
             INSERT INTO invoices (id, branch_id, patient_id, number, total)
               SELECT md5('i{b}-' || i)::uuid, '{br}', md5('p{b}-' || i)::uuid, 'F-' || i, 20 FROM generate_series(1, {k}) i;
             INSERT INTO invoice_items (id, invoice_id, quantity, unit_price)
               SELECT md5('t{b}-' || i || '-' || j)::uuid, md5('i{b}-' || i)::uuid, 1, 10
               FROM generate_series(1, {k}) i, generate_series(1, 2) j;\n",
            br = branch(b)
        ));
    }
    s.push_str("COMMIT;");
    s
}

async fn local_rows(p: &Pair) -> i64 {
    let mut n = 0;
    for t in &p.tables {
        n += count(&p.local, &format!("SELECT count(*) FROM {t}")).await;
    }
    n
}

/// Upstream's per-table read counters (`pg_stat_all_tables`: rows read by
/// sequential scans, rows fetched through indexes), once the backends of the
/// `once` that just exited have flushed theirs (two equal reads in a row).
async fn upstream_reads(p: &Pair) -> std::collections::BTreeMap<String, (i64, i64)> {
    let c = p.upstream.connect().await;
    let read = || async {
        c.batch_execute("SELECT pg_stat_clear_snapshot()").await.expect("clear");
        c.query(
            "SELECT schemaname || '.' || relname, coalesce(seq_tup_read, 0)::int8, coalesce(idx_tup_fetch, 0)::int8
             FROM pg_stat_all_tables WHERE schemaname IN ('public', 'centrovision_sync')",
            &[],
        )
        .await
        .expect("pg_stat_all_tables")
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2))))
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = read().await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// One `once`: its time, the down cycle's own `duration_ms` (from its "down
/// sync" log lines), the feed's pages and the time spent waiting for them
/// (its debug "feed page" lines: `pull_ms`), and the rows then in the local
/// synced tables.
struct Run {
    took: Duration,
    down_ms: u64,
    pages: usize,
    pull_ms: u64,
    rows: i64,
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
}

async fn timed_once(p: &Pair) -> Run {
    let t = Instant::now();
    let out = p.once().await;
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    let down_ms = log.lines().filter(|l| l.contains("down sync")).filter_map(|l| field(l, "duration_ms=")).max().unwrap_or(0);
    let pages: Vec<u64> = log.lines().filter(|l| l.contains("feed page")).filter_map(|l| field(l, "pull_ms=")).collect();
    Run { took, down_ms, pages: pages.len(), pull_ms: pages.iter().sum(), rows: local_rows(p).await }
}

/// Rows upstream read for one run, per table (sequential + index fetches).
fn read_between(
    before: &std::collections::BTreeMap<String, (i64, i64)>,
    after: &std::collections::BTreeMap<String, (i64, i64)>,
) -> Vec<(String, i64, i64)> {
    after
        .iter()
        .map(|(t, (s, i))| {
            let (s0, i0) = before.get(t).copied().unwrap_or_default();
            (t.clone(), s - s0, i - i0)
        })
        .filter(|(_, s, i)| s + i > 0)
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let k: usize = args.iter().position(|a| a == "--per-branch").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut whole = Pair::new("bench_scope_all", Mode::Postgres).await;
    let mut one = Pair::joining("bench_scope_one", &whole).await;
    whole.sync_extra.push_str("clinic_id = \"bench-all\"\n");
    one.sync_extra.push_str(&format!("clinic_id = \"bench-one\"\nbranch_ids = [\"{}\"]\n", branch(1)));
    whole.batch_size = 1000;
    one.batch_size = 1000;
    whole.write_config();
    one.write_config();
    whole.init().await;
    one.init().await;
    whole.upstream.connect().await.batch_execute(&seed_sql(k)).await.expect("seed upstream");
    let upstream_rows = {
        let mut n = 0;
        for t in &whole.tables {
            n += count(&whole.upstream, &format!("SELECT count(*) FROM {t}")).await;
        }
        n
    };
    // Scoped first, then the whole: the upstream caches are warm for the second.
    let r0 = upstream_reads(&whole).await;
    let one_run = timed_once(&one).await;
    let r1 = upstream_reads(&whole).await;
    let all_run = timed_once(&whole).await;
    let r2 = upstream_reads(&whole).await;
    println!(
        "| initial download (postgres mode, {BRANCHES} branches, {upstream_rows} rows upstream) | rows downloaded | down cycle (ms) | feed pages | waiting for pages (ms) | once (s) |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, r) in [("one branch (branch_ids = [b1])", &one_run), ("whole (unscoped, same run)", &all_run)] {
        println!("| {label} | {} | {} | {} | {} | {:.2} |", r.rows, r.down_ms, r.pages, r.pull_ms, r.took.as_secs_f64());
    }
    println!(
        "ratio one/whole: rows {:.3}, down cycle {:.3}, waiting for pages {:.3}, once {:.3}",
        one_run.rows as f64 / all_run.rows as f64,
        one_run.down_ms as f64 / all_run.down_ms.max(1) as f64,
        one_run.pull_ms as f64 / all_run.pull_ms.max(1) as f64,
        one_run.took.as_secs_f64() / all_run.took.as_secs_f64()
    );
    println!("\nrows read upstream (pg_stat_all_tables: sequential / index fetches)");
    println!("| table | one branch: seq | idx | whole: seq | idx |");
    println!("|---|---|---|---|---|");
    let (one_reads, all_reads) = (read_between(&r0, &r1), read_between(&r1, &r2));
    let mut names: Vec<&String> = one_reads.iter().chain(&all_reads).map(|(t, _, _)| t).collect();
    names.sort();
    names.dedup();
    for t in names {
        let get = |v: &[(String, i64, i64)]| v.iter().find(|(n, _, _)| n == t).map(|(_, s, i)| (*s, *i)).unwrap_or_default();
        let ((s1, i1), (s2, i2)) = (get(&one_reads), get(&all_reads));
        println!("| {t} | {s1} | {i1} | {s2} | {i2} |");
    }
}

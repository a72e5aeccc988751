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

/// The time of `once`, the down cycle's own `duration_ms` (from its "down
/// sync" log lines) and the rows then in the local synced tables.
async fn timed_once(p: &Pair) -> (Duration, u64, i64) {
    let t = Instant::now();
    let out = p.once().await;
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    let down_ms = log
        .lines()
        .filter(|l| l.contains("down sync"))
        .filter_map(|l| l.split("duration_ms=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (took, down_ms, local_rows(p).await)
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
    let (t_one, d_one, rows_one) = timed_once(&one).await;
    let (t_all, d_all, rows_all) = timed_once(&whole).await;
    println!(
        "| initial download (postgres mode, {BRANCHES} branches, {upstream_rows} rows upstream) | rows downloaded | down cycle (ms) | once (s) |"
    );
    println!("|---|---|---|---|");
    println!("| one branch (branch_ids = [b1]) | {rows_one} | {d_one} | {:.2} |", t_one.as_secs_f64());
    println!("| whole (unscoped, same run) | {rows_all} | {d_all} | {:.2} |", t_all.as_secs_f64());
    println!(
        "ratio one/whole: rows {:.3}, down cycle {:.3}, once {:.3}",
        rows_one as f64 / rows_all as f64,
        d_one as f64 / d_all.max(1) as f64,
        t_one.as_secs_f64() / t_all.as_secs_f64()
    );
}

//! End-to-end benchmark of centrovision-sync against real PostgreSQL
//! clusters, with same-run baselines. See benches/README.md.
//!
//! ```text
//! cargo bench --bench e2e                 # full profile (N = 1,000,000; tens of minutes)
//! cargo bench --bench e2e -- --quick      # small N, seconds
//! cargo bench --bench e2e -- --only drain,latency --n 200000
//! ```
//!
//! Writes bench-report/report.{json,md,svg} (+ pg_stat_statements.md) and
//! prints the markdown table.

// The integration tests' kit (clusters, the PostgREST stand-in), which the
// harness runs on.
#[path = "../../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports, reason = "the benchmark uses part of the kit; tests/it exercises the rest")]
mod support;

mod harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default_out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-report");
    let opts = match harness::Options::from_args(&args, &default_out) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(json) = &opts.render {
        match harness::render(json, &opts.out_dir) {
            Ok(report) => {
                println!("{}", report.markdown());
                return;
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!(
        "e2e: {} profile, N = {}, REST N = {}, download N = {}, report in {}",
        if opts.quick { "quick" } else { "full" },
        opts.n,
        opts.n_rest,
        opts.n_down,
        opts.out_dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let report = rt.block_on(harness::run(&opts));
    println!("{}", report.markdown());
    eprintln!("e2e: report written to {}", opts.out_dir.display());
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
}

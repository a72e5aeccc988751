//! The end-to-end benchmark's quick profile, run under `cargo test` so the
//! harness (benches/e2e/harness/, shared with `cargo bench --bench e2e`)
//! cannot rot. It asserts only that every section completes and yields
//! sane numbers and that the report files are written; never timings.
//!
//! It loads both cores by itself, so it runs alone (`support::floor`), as
//! it did when it was a test binary of its own.

use crate::support;

// The harness refers to the kit as `crate::support`, which is where
// tests/it/main.rs declares it.
#[path = "../../benches/e2e/harness/mod.rs"]
mod harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_benchmark_profile_completes_and_writes_its_report() {
    let _alone = support::floor::alone();
    let out = tempfile::tempdir().expect("temp dir");
    let opts = harness::Options::quick(out.path());
    let report = harness::run(&opts).await;
    assert!(report.errors.is_empty(), "benchmark sections failed:\n{}", report.errors.join("\n\n"));
    for f in ["report.json", "report.md", "report.svg"] {
        let p = out.path().join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} missing or empty", p.display());
    }
    for id in [
        "drain_pg_up",
        "drain_pg_total",
        "drain_rest_up",
        "capture_rate",
        "trigger_e2e",
        "latency_p50",
        "latency_max",
        "down_initial",
        "idle_cycle_postgres",
        "idle_cycle_rest",
        "drain_rss",
        "drain_bookkeeping",
        "page_data_p95",
    ] {
        let f = report.figure(id).unwrap_or_else(|| panic!("figure {id} missing from the report:\n{}", report.markdown()));
        assert!(f.value.is_finite() && f.value > 0.0, "figure {id} = {} is not a positive number", f.value);
        if let Some(b) = &f.baseline {
            assert!(b.value.is_finite() && b.value > 0.0, "baseline of {id} = {} is not a positive number", b.value);
        }
    }
    // Issue 11's figures carry their target and its verdict.
    for id in ["idle_cycle_postgres", "idle_cycle_rest", "drain_bookkeeping"] {
        let f = report.figure(id).unwrap();
        assert!(f.target.is_some() && f.met.is_some(), "figure {id} has no target or verdict");
    }
    // Issue 17's last line: the page idle costs nothing measurable (CPU
    // may round to 0 in a short window, so only present with a verdict),
    // and adds under 1 MiB to the binary.
    for id in ["page_idle_cpu", "page_idle_statements", "page_binary_size"] {
        let f = report.figure(id).unwrap_or_else(|| panic!("figure {id} missing from the report:\n{}", report.markdown()));
        assert!(f.target.is_some() && f.met.is_some(), "figure {id} has no target or verdict");
    }
    assert_eq!(report.figure("page_binary_size").unwrap().met, Some(true), "{}", report.markdown());
    // After pushing its backlog the clinic reads none of it back: a count,
    // not a timing, so it is asserted (the baseline is what was pushed).
    let readback = report.figure("drain_readback").unwrap_or_else(|| panic!("figure drain_readback missing:\n{}", report.markdown()));
    let pushed = readback.baseline.as_ref().map_or(0.0, |b| b.value);
    assert!(pushed > 0.0, "drain_readback has no positive baseline (changes pushed): {pushed}");
    assert_eq!(readback.value, 0.0, "the down cycle after the drain read back rows: {}", readback.note);
    assert_eq!(readback.met, Some(true));
    let pgbench = report.figures.iter().filter(|f| f.id.starts_with("pgbench_")).count();
    assert_eq!(pgbench, 5, "pgbench figures (one per variant but the baseline):\n{}", report.markdown());
    // Capture's pgbench figure is judged against both floors measured in the run.
    let capture = report.figure("pgbench_wal_capture_only").unwrap_or_else(|| panic!("no capture-only figure:\n{}", report.markdown()));
    assert!(capture.target.as_deref().is_some_and(|t| t.contains("pg_recvlogical") && t.contains("spec triggers")), "{:?}", capture.target);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).expect("report.json is JSON");
    assert!(json["figures"].as_array().is_some_and(|a| !a.is_empty()));
    let svg = std::fs::read_to_string(out.path().join("report.svg")).unwrap();
    assert!(svg.contains("<svg"), "report.svg is not an SVG");
}

//! Study-files mirror throughput against a plain `curl` of the same object
//! in the same run, on loopback, through the Storage stand-in of the tests
//! (`tests/it/support/storage.rs`, in this process: it serves both). See
//! benches/README.md, "Study files".
//!
//! ```text
//! cargo bench --bench storage                      # 1 GiB object
//! CV_STORAGE_BENCH_MB=256 cargo bench --bench storage
//! ```
//!
//! Download: `storage::mirror::download` (temporary file, size + MD5 check,
//! fsync, rename) against `curl -o`. Upload: `StorageClient::upload` (TUS,
//! 6 MiB chunks) against `curl -T` of the whole file in one request. Peak
//! RSS is this process's high-water mark (VmHWM), stand-in included, read
//! after the mirror's runs and before curl's (curl is a child process).

#[path = "../tests/it/support/storage.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the stand-in; tests/it exercises the rest")]
mod standin;

use std::process::Command;
use std::time::Instant;

use centrovision_sync::config::Config;
use centrovision_sync::storage::{StorageClient, mirror};
use standin::{SERVICE_KEY, StorageStandIn};

const BUCKET: &str = "study-files";

fn hwm_mb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0)
        / 1024
}

fn main() {
    let mb: u64 = std::env::var("CV_STORAGE_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let size = mb * 1024 * 1024;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let s = StorageStandIn::start(&[BUCKET]).await;
        s.put_large(BUCKET, "scans/big.bin", size).await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[supabase]\nurl = \"http://127.0.0.1:9\"\nservice_key = \"{SERVICE_KEY}\"\n[local_postgres]\ndatabase = \"x\"\nuser = \"x\"\n\
             [storage]\nbuckets = [\"{BUCKET}\"]\nlocal_dir = \"{}\"\nurl = \"{}\"\n",
            dir.path().display(),
            s.url()
        );
        let cfg = Config::from_toml(&text, "bench", |_| None).unwrap();
        let client = StorageClient::from_config(&cfg).unwrap().unwrap();
        let info = client.info(BUCKET, "scans/big.bin").await.unwrap().unwrap();
        let hwm_before = hwm_mb();

        let target = dir.path().join("scans/big.bin");
        let t = Instant::now();
        mirror::download(&client, BUCKET, "scans/big.bin", &target, &info).await.unwrap();
        let mirror_down = t.elapsed().as_secs_f64();
        let t = Instant::now();
        client.upload(BUCKET, "scans/up-mirror.bin", &target, true).await.unwrap();
        let mirror_up = t.elapsed().as_secs_f64();
        let hwm_after = hwm_mb();

        let url = format!("{}/object/{BUCKET}/scans/big.bin", s.url());
        let curl_out = dir.path().join("curl.bin");
        let auth = [format!("apikey: {SERVICE_KEY}"), format!("Authorization: Bearer {SERVICE_KEY}")];
        let t = Instant::now();
        let st = tokio::task::spawn_blocking({
            let (url, out, auth) = (url.clone(), curl_out.clone(), auth.clone());
            move || Command::new("curl").args(["-sf", "-o"]).arg(&out).args(["-H", &auth[0], "-H", &auth[1]]).arg(&url).status().unwrap()
        })
        .await
        .unwrap();
        let curl_down = t.elapsed().as_secs_f64();
        assert!(st.success(), "curl download failed");
        let up_url = format!("{}/object/{BUCKET}/scans/up-curl.bin", s.url());
        let t = Instant::now();
        let st = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-X", "POST", "-H", &auth[0], "-H", &auth[1], "-H", "x-upsert: true", "-T"])
                .arg(&curl_out)
                .arg(&up_url)
                .status()
                .unwrap()
        })
        .await
        .unwrap();
        let curl_up = t.elapsed().as_secs_f64();
        assert!(st.success(), "curl upload failed");

        let rate = |secs: f64| mb as f64 / secs;
        println!("| study files, {mb} MiB object, loopback | seconds | MiB/s | vs curl |");
        println!("|---|---:|---:|---:|");
        println!("| curl -o (download) | {curl_down:.2} | {:.0} | 100% |", rate(curl_down));
        println!(
            "| mirror download (temp file, MD5 check, fsync, rename) | {mirror_down:.2} | {:.0} | {:.0}% |",
            rate(mirror_down),
            100.0 * curl_down / mirror_down
        );
        println!("| curl -T (upload, one request) | {curl_up:.2} | {:.0} | 100% |", rate(curl_up));
        println!("| mirror upload (TUS, 6 MiB chunks) | {mirror_up:.2} | {:.0} | {:.0}% |", rate(mirror_up), 100.0 * curl_up / mirror_up);
        println!("peak RSS of this process (stand-in included): {hwm_after} MB (before the transfers: {hwm_before} MB)");
    });
}

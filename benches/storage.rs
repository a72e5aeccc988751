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
//! fsync, rename) against `curl -o`, and against curl piped through `tee`
//! and `md5sum`, then `sync` (the same checks the mirror makes, with
//! standard tools). Upload: `StorageClient::upload` (TUS,
//! 6 MiB chunks) against `curl -T` of the whole file in one request and
//! against curl doing the same TUS sequence on the same endpoint (the fair
//! baseline: the stand-in's per-chunk cost is on both sides). Plain
//! uploads (files up to 6 MiB, one request each, the body streamed from
//! the file): `StorageClient::upload` of a 6 MiB file, 16 times, against
//! `curl -T` of the same file as many times. Peak
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
/// Plain uploads timed, each of a 6 MiB file (the plain-upload maximum).
const PLAIN_REPEATS: usize = 16;

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
        client.upload(BUCKET, "scans/up-mirror.bin", &target, true, None).await.unwrap();
        let mirror_up = t.elapsed().as_secs_f64();
        let small = dir.path().join("small.bin");
        {
            let f = std::fs::File::create(&small).unwrap();
            f.set_len(centrovision_sync::storage::client::PLAIN_UPLOAD_MAX).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"plain", 4096).unwrap();
        }
        let t = Instant::now();
        for i in 0..PLAIN_REPEATS {
            client.upload(BUCKET, &format!("small/mirror-{i}.bin"), &small, true, None).await.unwrap();
        }
        let mirror_plain = t.elapsed().as_secs_f64();
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
        // The same work as the mirror's download, with standard tools: the
        // MD5 computed as the bytes arrive, the file fsynced.
        let checked_out = dir.path().join("curl-checked.bin");
        let t = Instant::now();
        let st = tokio::task::spawn_blocking({
            let (url, out, auth) = (url.clone(), checked_out.clone(), auth.clone());
            move || {
                Command::new("bash")
                    .args(["-c", r#"set -o pipefail; curl -sf -H "$A1" -H "$A2" "$URL" | tee "$OUT" | md5sum >/dev/null && sync "$OUT""#])
                    .env("A1", &auth[0])
                    .env("A2", &auth[1])
                    .env("URL", &url)
                    .env("OUT", &out)
                    .status()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let curl_checked = t.elapsed().as_secs_f64();
        assert!(st.success(), "curl | tee | md5sum download failed");
        assert_eq!(std::fs::metadata(&checked_out).unwrap().len(), mb << 20, "the checked curl download is whole");
        let up_url = format!("{}/object/{BUCKET}/scans/up-curl.bin", s.url());
        let tus_auth = auth.clone();
        let t = Instant::now();
        let st = tokio::task::spawn_blocking(move || {
            curl_upload(&auth, &curl_out, &up_url).status().unwrap()
        })
        .await
        .unwrap();
        let curl_up = t.elapsed().as_secs_f64();
        assert!(st.success(), "curl upload failed");
        let (base, auth2, small2) = (s.url(), tus_auth.clone(), small.clone());
        let t = Instant::now();
        let ok = tokio::task::spawn_blocking(move || {
            (0..PLAIN_REPEATS).all(|i| {
                curl_upload(&auth2, &small2, &format!("{base}/object/{BUCKET}/small/curl-{i}.bin")).status().unwrap().success()
            })
        })
        .await
        .unwrap();
        let curl_plain = t.elapsed().as_secs_f64();
        assert!(ok, "curl plain upload failed");

        // The fair baseline for TUS: curl doing the same sequence against
        // the same stand-in endpoint (create, then one PATCH per 6 MiB
        // chunk, sequential, one connection), so the stand-in's per-chunk
        // cost (it writes, copies and fsyncs each chunk) is on both sides.
        // The chunks are cut into files beforehand, untimed.
        let chunks = split(&target, dir.path());
        let (base, len) = (s.url(), size);
        let t = Instant::now();
        let st = tokio::task::spawn_blocking(move || curl_tus(&base, &tus_auth, len, &chunks)).await.unwrap();
        let curl_tus = t.elapsed().as_secs_f64();
        assert!(st, "curl TUS upload failed");
        assert_eq!(s.objects(BUCKET).iter().filter(|(p, _)| p == "scans/up-curl-tus.bin").count(), 1, "curl's TUS upload landed");

        let rate = |secs: f64| mb as f64 / secs;
        println!("| study files, {mb} MiB object, loopback | seconds | MiB/s | vs curl |");
        println!("|---|---:|---:|---:|");
        println!("| curl -o (download) | {curl_down:.2} | {:.0} | 100% |", rate(curl_down));
        println!(
            "| curl -o \\| tee \\| md5sum, then sync (the mirror's checks, standard tools) | {curl_checked:.2} | {:.0} | {:.0}% of curl -o |",
            rate(curl_checked),
            100.0 * curl_down / curl_checked
        );
        println!(
            "| mirror download (temp file, MD5 check, fsync, rename) | {mirror_down:.2} | {:.0} | {:.0}% of curl -o, {:.0}% of curl with the same checks |",
            rate(mirror_down),
            100.0 * curl_down / mirror_down,
            100.0 * curl_checked / mirror_down
        );
        println!("| curl -T (upload, one request) | {curl_up:.2} | {:.0} | 100% |", rate(curl_up));
        println!("| curl TUS (create + 6 MiB PATCHes, same stand-in endpoint) | {curl_tus:.2} | {:.0} | 100% |", rate(curl_tus));
        println!(
            "| mirror upload (TUS, 6 MiB chunks) | {mirror_up:.2} | {:.0} | {:.0}% of curl TUS ({:.0}% of curl -T) |",
            rate(mirror_up),
            100.0 * curl_tus / mirror_up,
            100.0 * curl_up / mirror_up
        );
        let plain_mb = (PLAIN_REPEATS as u64 * centrovision_sync::storage::client::PLAIN_UPLOAD_MAX) as f64 / (1024.0 * 1024.0);
        println!(
            "| curl -T, {PLAIN_REPEATS} × 6 MiB (one request each, a process each) | {curl_plain:.2} | {:.0} | 100% |",
            plain_mb / curl_plain
        );
        println!(
            "| mirror plain upload, {PLAIN_REPEATS} × 6 MiB (streamed body) | {mirror_plain:.2} | {:.0} | {:.0}% |",
            plain_mb / mirror_plain,
            100.0 * curl_plain / mirror_plain
        );
        println!("peak RSS of this process (stand-in included): {hwm_after} MB (before the transfers: {hwm_before} MB)");
    });
}

/// Cuts `file` into 6 MiB chunk files (the last shorter), in `dir`.
/// curl uploading `file` as a plain Storage object to `url` (POST, upsert),
/// the baseline of the service's plain upload.
fn curl_upload(auth: &[String; 2], file: &std::path::Path, url: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sf", "-o", "/dev/null", "-X", "POST", "-H", "Expect:", "-H", &auth[0], "-H", &auth[1], "-H", "x-upsert: true", "-T"])
        .arg(file)
        .arg(url);
    c
}

fn split(file: &std::path::Path, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(file).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; centrovision_sync::storage::client::TUS_CHUNK];
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..]).unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        let p = dir.join(format!("chunk-{}", out.len()));
        std::fs::write(&p, &buf[..n]).unwrap();
        out.push(p);
    }
    out
}

/// curl: TUS create, then every chunk as a PATCH in one curl process (one
/// connection, `--next` between requests).
fn curl_tus(base: &str, auth: &[String; 2], len: u64, chunks: &[std::path::PathBuf]) -> bool {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let meta = format!("bucketName {},objectName {}", b64(BUCKET), b64("scans/up-curl-tus.bin"));
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-D", "-", "-X", "POST", "-H", &auth[0], "-H", &auth[1], "-H", "Tus-Resumable: 1.0.0"])
        .args(["-H", &format!("Upload-Length: {len}"), "-H", &format!("Upload-Metadata: {meta}"), "-H", "x-upsert: true"])
        .arg(format!("{base}/upload/resumable"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    let Some(loc) = head.lines().find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: "))) else {
        return false;
    };
    let url = format!("http://127.0.0.1:{}{}", base.split(':').nth(2).unwrap().split('/').next().unwrap(), loc.trim());
    let mut args: Vec<String> = Vec::new();
    let mut offset = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        for a in ["-sf", "-o", "/dev/null", "-X", "PATCH", "-H", "Expect:", "-H", &auth[0], "-H", &auth[1], "-H", "Tus-Resumable: 1.0.0"] {
            args.push(a.into());
        }
        args.extend(["-H".into(), format!("Upload-Offset: {offset}")]);
        args.extend([
            "-H".into(),
            "Content-Type: application/offset+octet-stream".into(),
            "-T".into(),
            c.display().to_string(),
            url.clone(),
        ]);
        offset += std::fs::metadata(c).unwrap().len();
    }
    Command::new("curl").args(&args).status().unwrap().success()
}

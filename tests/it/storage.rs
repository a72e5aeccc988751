//! Study files against the Storage stand-in: downloads that resume, are
//! verified and never visible half done; uploads that resume from the
//! server's offset; Storage's answers in the project's error classes.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use centrovision_sync::config::Config;
use centrovision_sync::error::{Class, ErrorKind};
use centrovision_sync::storage::{StorageClient, mirror};
use support::storage::{ANON_KEY, SERVICE_KEY, StorageStandIn};

const BUCKET: &str = "study-files";
const MB: u64 = 1024 * 1024;

fn config(url: &str, key: &str, local_dir: &Path) -> Config {
    let text = format!(
        "[supabase]\nurl = \"http://127.0.0.1:9\"\nservice_key = \"{key}\"\n[local_postgres]\ndatabase = \"x\"\nuser = \"x\"\n\
         [storage]\nbuckets = [\"{BUCKET}\"]\nlocal_dir = \"{}\"\nurl = \"{url}\"\n",
        local_dir.display()
    );
    Config::from_toml(&text, "test", |_| None).unwrap()
}

fn client(s: &StorageStandIn, key: &str, dir: &Path) -> StorageClient {
    StorageClient::from_config(&config(&s.url(), key, dir)).unwrap().expect("[storage] configured")
}

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| mirror::is_temporary(&p.file_name().unwrap().to_string_lossy())).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_object_downloads_with_bounded_memory_and_resumes_after_a_cut_without_fetching_it_again() {
    let standin = StorageStandIn::start(&[BUCKET]).await;
    let size = 200 * MB;
    let md5 = standin.put_large(BUCKET, "scans/oct-200.bin", size).await;
    let mirror_dir = tempfile::tempdir().unwrap();
    let c = client(&standin, SERVICE_KEY, mirror_dir.path());
    let info = c.info(BUCKET, "scans/oct-200.bin").await.unwrap().expect("the object exists");
    assert_eq!((info.size, info.md5()), (size, Some(md5.as_str())));
    let target = mirror::local_path(mirror_dir.path(), "scans/oct-200.bin").unwrap();

    // Peak resident memory while 200 MB flow (sampled; the process is
    // shared with other tests, hence the margin: a held file is +200 MB).
    let base = rss_kb();
    let peak = Arc::new(AtomicU64::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kb(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    standin.cut_next_download_after(70 * MB);
    let cut = mirror::download(&c, BUCKET, "scans/oct-200.bin", &target, &info).await.unwrap_err();
    assert_eq!(cut.class(), Class::Transient, "a dropped connection is retried, not reported as bad data: {cut}");
    assert!(!target.exists(), "the cut download is not under the real name");
    let part = temporaries(target.parent().unwrap());
    assert_eq!(part.len(), 1, "the partial download is kept to resume: {part:?}");
    let kept = std::fs::metadata(&part[0]).unwrap().len();
    assert!(kept >= 60 * MB, "the bytes received before the cut are kept ({kept})");

    standin.clear_log();
    let fetched = mirror::download(&c, BUCKET, "scans/oct-200.bin", &target, &info).await.unwrap();
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(fetched.resumed_from, kept, "the download resumed from the partial file");
    let gets: Vec<_> = standin.log().into_iter().filter(|l| l.method == "GET").collect();
    assert_eq!(gets.len(), 1, "one request resumed it: {gets:?}");
    assert_eq!(gets[0].range_start, Some(kept), "it asked for the missing range only");
    assert_eq!(standin.bytes_downloaded(), size - kept, "nothing already received was requested again");
    assert_eq!(mirror::md5_file(&target).await.unwrap(), md5, "the mirror file is the object, byte for byte");
    assert!(temporaries(target.parent().unwrap()).is_empty(), "no temporary file left");
    let grew_mb = peak.load(Ordering::SeqCst).saturating_sub(base) / 1024;
    assert!(grew_mb < 100, "memory grew by {grew_mb} MB while 200 MB moved: the file was held in memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_failed_download_is_never_exposed_and_storage_answers_keep_their_class() {
    let standin = StorageStandIn::start(&[BUCKET]).await;
    let body: Vec<u8> = (0..3 * MB).map(|i| (i % 251) as u8).collect();
    standin.put(BUCKET, "pdf/report.pdf", &body).await;
    let mirror_dir = tempfile::tempdir().unwrap();
    let c = client(&standin, SERVICE_KEY, mirror_dir.path());
    let info = c.info(BUCKET, "pdf/report.pdf").await.unwrap().unwrap();
    let target = mirror::local_path(mirror_dir.path(), "pdf/report.pdf").unwrap();

    standin.corrupt_next_download();
    let e = mirror::download(&c, BUCKET, "pdf/report.pdf", &target, &info).await.unwrap_err();
    assert!(e.message.contains("checksum"), "the corruption is caught by the checksum: {e}");
    assert!(!target.exists(), "a corrupt download is never under the real name");
    assert!(temporaries(target.parent().unwrap()).is_empty(), "the corrupt bytes are not kept to resume from");

    standin.fail_next(1);
    let e = mirror::download(&c, BUCKET, "pdf/report.pdf", &target, &info).await.unwrap_err();
    assert_eq!((e.kind, e.class()), (ErrorKind::UpstreamUnreachable, Class::Transient), "a 503 is transient: {e}");
    assert!(!target.exists());

    standin.set_offline(true);
    let e = c.info(BUCKET, "pdf/report.pdf").await.unwrap_err();
    assert!(e.is_outage(), "Storage not answering is an outage: {e}");
    standin.set_offline(false);
    standin.set_slow(Some(Duration::from_millis(5)));
    mirror::download(&c, BUCKET, "pdf/report.pdf", &target, &info).await.unwrap();
    standin.set_slow(None);
    assert_eq!(std::fs::read(&target).unwrap(), body, "a slow link still ends with the whole file");

    // Storage's answers, in the project's classes.
    assert_eq!(c.info(BUCKET, "pdf/missing.pdf").await.unwrap(), None, "a missing object (HTTP 400, statusCode 404) is None");
    let e = c.info("no-such-bucket", "a.pdf").await.unwrap_err();
    assert_eq!((e.kind, e.class()), (ErrorKind::MissingObject, Class::Operator), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("bucket"), "the hint says to create the bucket: {e}");
    let anon = client(&standin, ANON_KEY, mirror_dir.path());
    let e = anon.info(BUCKET, "pdf/report.pdf").await.unwrap_err();
    assert_eq!(e.class(), Class::Operator, "the anon key needs the operator: {e}");
    assert!(!e.to_string().contains(ANON_KEY), "the key is never in a message");
    let dup = dir_file(mirror_dir.path(), "dup.bin", b"x");
    let e = c.upload(BUCKET, "pdf/report.pdf", &dup, false).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("409"), "an existing object is not overwritten without upsert: {e}");
    assert_eq!(standin.get(BUCKET, "pdf/report.pdf").await.unwrap(), body, "and it is unchanged");
}

fn dir_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_by_tus_in_6_mib_chunks_and_resumes_from_the_server_offset() {
    let standin = StorageStandIn::start(&[BUCKET]).await;
    let dir = tempfile::tempdir().unwrap();
    let len = 20 * MB + 12_345;
    let file = dir.path().join("oct-20.bin");
    {
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(len).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..20u64 {
            f.write_all_at(&i.to_le_bytes(), i * MB + 7).unwrap();
        }
    }
    let c = client(&standin, SERVICE_KEY, dir.path());
    let location = c.tus_create(BUCKET, "scans/oct-20.bin", len, false).await.unwrap();
    standin.fail_patch_after(2);
    let e = c.tus_send(&location, &file, len).await.unwrap_err();
    assert_eq!(e.class(), Class::Transient, "{e}");
    assert_eq!(c.tus_offset(&location).await.unwrap(), 12 * MB, "two whole 6 MiB chunks arrived before the cut");
    assert_eq!(standin.get(BUCKET, "scans/oct-20.bin").await, None, "an unfinished upload is no object");

    standin.clear_log();
    c.tus_send(&location, &file, len).await.unwrap();
    let patches: Vec<u64> = standin.log().iter().filter(|l| l.method == "PATCH").map(|l| l.bytes.load(Ordering::SeqCst)).collect();
    assert_eq!(patches, vec![6 * MB, 2 * MB + 12_345], "the resumed upload sent only what the server lacked");
    let local_md5 = mirror::md5_file(&file).await.unwrap();
    assert_eq!(standin.objects(BUCKET), vec![("scans/oct-20.bin".to_string(), local_md5)], "the object is the file");
}

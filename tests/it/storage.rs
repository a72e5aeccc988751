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
use centrovision_sync::storage::{Stamp, StorageClient, mirror};
use support::storage::{ANON_KEY, SERVICE_KEY, StorageStandIn};

const BUCKET: &str = "study-files";
const MB: u64 = 1024 * 1024;

fn config(url: &str, key: &str, local_dir: &Path) -> Config {
    config_with(url, key, local_dir, "")
}

/// `extra`: more `[storage]` lines.
fn config_with(url: &str, key: &str, local_dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[supabase]\nurl = \"http://127.0.0.1:9\"\nservice_key = \"{key}\"\n[local_postgres]\ndatabase = \"x\"\nuser = \"x\"\n\
         [storage]\nbuckets = [\"{BUCKET}\"]\nlocal_dir = \"{}\"\nurl = \"{url}\"\n{extra}",
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
    let e = c.upload(BUCKET, "pdf/report.pdf", &dup, false, None).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("409"), "an existing object is not overwritten without upsert: {e}");
    assert_eq!(standin.get(BUCKET, "pdf/report.pdf").await.unwrap(), body, "and it is unchanged");
}

fn dir_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_by_tus_in_6_mib_chunks_resumes_from_the_server_offset_and_transfers_keep_under_the_bandwidth_limit() {
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
    let location = c.tus_create(BUCKET, "scans/oct-20.bin", len, false, None).await.unwrap();
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

    // [storage] bandwidth_limit_mbps: 8 Mbit/s is 1 MB/s down and for a
    // plain (one-request) upload, paced per 256 KiB piece of its streamed
    // body; 64 Mbit/s is 8 MB/s up by TUS (paced per 6 MiB chunk). Each
    // moves about a second's worth (the plain upload 0.6 s); the rate
    // measured stays under the limit (+10 % for timer slack) and is not far
    // below it (the limit paces, not stalls).
    let limited = |mbps: u32| {
        StorageClient::from_config(&config_with(&standin.url(), SERVICE_KEY, dir.path(), &format!("bandwidth_limit_mbps = {mbps}\n")))
            .unwrap()
            .unwrap()
    };
    let check = |what: &str, bytes: u64, limit: f64, took: Duration| {
        let rate = bytes as f64 / took.as_secs_f64();
        assert!(rate <= limit * 1.1 && rate >= limit * 0.5, "{what}: {rate:.0} B/s against a limit of {limit:.0} B/s ({took:?})");
    };
    let body: Vec<u8> = (0..1_200_000u32).map(|i| (i % 253) as u8).collect();
    standin.put(BUCKET, "pdf/paced.pdf", &body).await;
    let down = limited(8);
    let info = down.info(BUCKET, "pdf/paced.pdf").await.unwrap().unwrap();
    let t = std::time::Instant::now();
    mirror::download(&down, BUCKET, "pdf/paced.pdf", &dir.path().join("paced.pdf"), &info).await.unwrap();
    check("download", body.len() as u64, 1_000_000.0, t.elapsed());
    let up_file = dir.path().join("paced-up.bin");
    std::fs::File::create(&up_file).unwrap().set_len(7 * MB).unwrap();
    let t = std::time::Instant::now();
    limited(64).upload(BUCKET, "scans/paced-up.bin", &up_file, false, None).await.unwrap();
    check("TUS upload", 7 * MB, 8_000_000.0, t.elapsed());
    let plain = dir_file(dir.path(), "paced-plain.pdf", &body[..600_000]);
    let t = std::time::Instant::now();
    down.upload(BUCKET, "pdf/paced-plain.pdf", &plain, false, None).await.unwrap();
    check("plain upload", 600_000, 1_000_000.0, t.elapsed());
    assert_eq!(standin.get(BUCKET, "pdf/paced-plain.pdf").await.unwrap(), &body[..600_000], "the streamed upload is the file");
}

/// A local database with the control tables and a `study_files` table.
async fn clinic_db(hint: &str) -> tokio_postgres::Client {
    let db = support::Cluster::shared().create_database(hint).await;
    let c = db.connect().await;
    centrovision_sync::store::Store::new(&c, centrovision_sync::error::LOCAL).install_schema().await.unwrap();
    c.batch_execute("CREATE TABLE study_files (id serial PRIMARY KEY, storage_path text, updated_at timestamptz DEFAULT now())")
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_queue_downloads_new_rows_uploads_offline_files_keeps_conflict_losers_and_removes_deleted_rows_files() {
    use centrovision_sync::storage::queue;
    use centrovision_sync::store::Store;

    let standin = StorageStandIn::start(&[BUCKET]).await;
    let dir = tempfile::tempdir().unwrap();
    let tmp_b = tempfile::tempdir().unwrap();
    let mut cfg = config(&standin.url(), SERVICE_KEY, dir.path());
    let storage = cfg.storage.as_mut().unwrap();
    storage.retention_days = 0;
    storage.max_file_bytes = 16 * MB;
    let storage = cfg.storage.clone().unwrap();
    let c = client(&standin, SERVICE_KEY, dir.path());
    let db = clinic_db("storage_queue").await;
    let store = Store::new(&db, centrovision_sync::error::LOCAL);
    let run = || queue::cycle(&store, &c, &storage, "public", "clinic-a");

    // A row arrives (from upstream) naming an object: it is downloaded.
    standin.put(BUCKET, "scans/oct-1.bin", b"oct one").await;
    db.batch_execute("INSERT INTO study_files (storage_path) VALUES ('scans/oct-1.bin')").await.unwrap();
    let r = run().await.unwrap();
    assert_eq!((r.downloaded, r.waiting), (1, 0), "{r:?}");
    assert_eq!(std::fs::read(dir.path().join("scans/oct-1.bin")).unwrap(), b"oct one");
    assert_eq!(run().await.unwrap(), queue::CycleReport::default(), "a synced file costs no transfer");

    // Offline, the clinic writes a file and its row: it waits, then goes up
    // when the link is back.
    standin.set_offline(true);
    std::fs::create_dir_all(dir.path().join("pdf")).unwrap();
    std::fs::write(dir.path().join("pdf/visit-7.pdf"), b"%PDF written offline").unwrap();
    db.batch_execute("INSERT INTO study_files (storage_path) VALUES ('pdf/visit-7.pdf')").await.unwrap();
    let e = run().await.unwrap_err();
    assert!(e.is_transient(), "offline is retried later: {e}");
    let s = store.files_summary().await.unwrap();
    assert_eq!(s.pending, 1, "the offline file waits in the persisted queue: {s:?}");
    standin.set_offline(false);
    let r = run().await.unwrap();
    assert_eq!(r.uploaded, 1, "{r:?}");
    assert_eq!(standin.get(BUCKET, "pdf/visit-7.pdf").await.unwrap(), b"%PDF written offline");
    assert_eq!(store.files_summary().await.unwrap().pending, 0);
    // It carries its row's stamp and this clinic as user metadata (the
    // x-metadata header), which Storage returns from info only.
    let row_stamp = |path: &'static str| {
        let db = &db;
        async move {
            let r = db.query_one("SELECT updated_at FROM study_files WHERE storage_path = $1", &[&path]).await.unwrap();
            Some(r.get::<_, chrono::DateTime<chrono::Utc>>(0))
        }
    };
    let info = c.info(BUCKET, "pdf/visit-7.pdf").await.unwrap().unwrap();
    assert_eq!(
        info.stamp,
        Some(Stamp { at: row_stamp("pdf/visit-7.pdf").await, writer: "clinic-a".into() }),
        "the upload carries its row's stamp: {:?}",
        standin.user_metadata(BUCKET, "pdf/visit-7.pdf")
    );
    let listed = c.list(BUCKET, "pdf").await.unwrap();
    assert!(listed.iter().all(|l| l.info.stamp.is_none()), "a listing has no user metadata, as Storage's: {listed:?}");
    let head = reqwest::Client::new()
        .head(format!("{}/object/{BUCKET}/pdf/visit-7.pdf", standin.url()))
        .header("apikey", SERVICE_KEY)
        .header("Authorization", format!("Bearer {SERVICE_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(
        head.headers().contains_key("etag") && !head.headers().contains_key("x-metadata"),
        "HEAD answers headers only, no user metadata, as Storage's: {:?}",
        head.headers()
    );

    // Both sides change the same file: upstream's version wins, the
    // clinic's is kept beside it on both sides; nothing overwritten. The
    // link drops as the clinic's version goes up under its loser's name:
    // the mirror is left as it was (no copy only in the mirror), and the
    // next cycle decides again.
    standin.put(BUCKET, "scans/oct-1.bin", b"oct one, re-exported upstream").await;
    std::fs::write(dir.path().join("scans/oct-1.bin"), b"oct one, annotated at the clinic").unwrap();
    standin.fail_next_uploads(1);
    let e = run().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("scans/oct-1.bin")).ok().as_deref(),
        Some(&b"oct one, annotated at the clinic"[..]),
        "the clinic's version stays in place while its copy beside could not go up"
    );
    let beside: Vec<_> = std::fs::read_dir(dir.path().join("scans")).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(beside.len(), 1, "nothing moved aside while its upload failed: {beside:?}");
    let r = run().await.unwrap();
    assert_eq!(r.conflicts, 1, "{r:?}");
    assert_eq!(std::fs::read(dir.path().join("scans/oct-1.bin")).unwrap(), b"oct one, re-exported upstream");
    let losers: Vec<_> = standin.objects(BUCKET).into_iter().filter(|(p, _)| p.starts_with("scans/oct-1.bin.conflict-clinic-a-")).collect();
    assert_eq!(losers.len(), 1, "the clinic's version is kept beside the object: {:?}", standin.objects(BUCKET));
    assert_eq!(standin.get(BUCKET, &losers[0].0).await.unwrap(), b"oct one, annotated at the clinic");

    // Both change it again, but now the clinic's row is later than the
    // object's last write: the rule of rows gives the clinic's version the
    // object, and upstream's is kept beside it.
    standin.put(BUCKET, "scans/oct-1.bin", b"oct one, re-exported again upstream").await;
    standin.set_modified(BUCKET, "scans/oct-1.bin", chrono::Utc::now() - chrono::Duration::minutes(10));
    std::fs::write(dir.path().join("scans/oct-1.bin"), b"oct one, annotated again").unwrap();
    db.batch_execute("UPDATE study_files SET updated_at = now() WHERE storage_path = 'scans/oct-1.bin'").await.unwrap();
    let r = run().await.unwrap();
    assert_eq!((r.conflicts, r.uploaded), (1, 1), "{r:?}");
    assert_eq!(
        standin.get(BUCKET, "scans/oct-1.bin").await.unwrap(),
        b"oct one, annotated again",
        "the later version (the clinic's row) wins upstream"
    );
    assert_eq!(std::fs::read(dir.path().join("scans/oct-1.bin")).unwrap(), b"oct one, annotated again");
    let kept: Vec<_> = standin.objects(BUCKET).into_iter().filter(|(p, _)| p.starts_with("scans/oct-1.bin.conflict-upstream-")).collect();
    assert_eq!(kept.len(), 1, "upstream's version is kept beside the object: {:?}", standin.objects(BUCKET));
    assert_eq!(standin.get(BUCKET, &kept[0].0).await.unwrap(), b"oct one, re-exported again upstream");
    assert_eq!(store.files_summary().await.unwrap().conflicts, 2, "both conflicts are counted for status");
    assert_eq!(run().await.unwrap(), queue::CycleReport::default(), "after the conflict both sides are equal");

    // An object uploaded late: clinic-b edited the file two hours ago while
    // offline and uploads it only now; this clinic edited it 30 minutes
    // ago. By upload time clinic-b's would win; by its row's stamp (its
    // user metadata) it is the earlier version and loses, kept beside the
    // object under its writer's name.
    let b_stamp = Stamp {
        at: Some(chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() - chrono::Duration::hours(2), 6)),
        writer: "clinic-b".into(),
    };
    let b_file = dir_file(tmp_b.path(), "oct-1-b.bin", b"oct one, edited offline at clinic b");
    c.upload(BUCKET, "scans/oct-1.bin", &b_file, true, Some(&b_stamp)).await.unwrap();
    std::fs::write(dir.path().join("scans/oct-1.bin"), b"oct one, annotated a third time").unwrap();
    db.batch_execute("UPDATE study_files SET updated_at = now() - interval '30 minutes' WHERE storage_path = 'scans/oct-1.bin'")
        .await
        .unwrap();
    let r = run().await.unwrap();
    assert_eq!((r.conflicts, r.uploaded), (1, 1), "{r:?}");
    assert_eq!(
        standin.get(BUCKET, "scans/oct-1.bin").await.unwrap(),
        b"oct one, annotated a third time",
        "the late upload loses by its row's stamp, not its upload time"
    );
    let kept_b: Vec<_> = standin.objects(BUCKET).into_iter().filter(|(p, _)| p.starts_with("scans/oct-1.bin.conflict-clinic-b-")).collect();
    assert_eq!(kept_b.len(), 1, "clinic-b's version is kept beside, named by its writer: {:?}", standin.objects(BUCKET));
    assert_eq!(standin.get(BUCKET, &kept_b[0].0).await.unwrap(), b"oct one, edited offline at clinic b");
    assert_eq!(c.info(BUCKET, &kept_b[0].0).await.unwrap().unwrap().stamp, Some(b_stamp), "the kept version keeps its stamp");
    assert_eq!(
        c.info(BUCKET, "scans/oct-1.bin").await.unwrap().unwrap().stamp,
        Some(Stamp { at: row_stamp("scans/oct-1.bin").await, writer: "clinic-a".into() }),
        "the winner went up with its row's stamp"
    );
    assert_eq!(run().await.unwrap(), queue::CycleReport::default(), "after the conflict both sides are equal");

    // Only the clinic changes it: it goes up over the unchanged object.
    std::fs::write(dir.path().join("pdf/visit-7.pdf"), b"%PDF corrected").unwrap();
    let r = run().await.unwrap();
    assert_eq!((r.uploaded, r.conflicts), (1, 0), "{r:?}");
    assert_eq!(standin.get(BUCKET, "pdf/visit-7.pdf").await.unwrap(), b"%PDF corrected");

    // A large file written at the clinic goes up by TUS; the upload is cut
    // after one chunk, and the next cycle resumes it (its URL is in the
    // persisted queue) instead of starting over.
    let large = dir.path().join("scans/oct-13.bin");
    std::fs::File::create(&large).unwrap().set_len(13 * MB).unwrap();
    db.batch_execute("INSERT INTO study_files (storage_path) VALUES ('scans/oct-13.bin')").await.unwrap();
    standin.fail_patch_after(1);
    let e = run().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    standin.clear_log();
    let r = run().await.unwrap();
    assert_eq!(r.uploaded, 1, "{r:?}");
    let log = standin.log();
    assert!(!log.iter().any(|l| l.method == "POST" && l.path.ends_with("/upload/resumable")), "no new upload was created: {log:?}");
    let sent: Vec<u64> = log.iter().filter(|l| l.method == "PATCH").map(|l| l.bytes.load(Ordering::SeqCst)).collect();
    assert_eq!(sent, vec![6 * MB, MB], "only the chunks the server lacked were sent");
    assert_eq!(standin.get(BUCKET, "scans/oct-13.bin").await.map(|b| b.len() as u64), Some(13 * MB));
    assert_eq!(
        c.info(BUCKET, "scans/oct-13.bin").await.unwrap().unwrap().stamp,
        Some(Stamp { at: row_stamp("scans/oct-13.bin").await, writer: "clinic-a".into() }),
        "a TUS upload carries its row's stamp too (Upload-Metadata `metadata`)"
    );

    // A file over [storage] max_file_mb is refused naming the key, without
    // a transfer, and without ending the cycle: it waits, shown in status,
    // and later cycles neither send it nor fail on it.
    std::fs::File::create(dir.path().join("scans/oct-huge.bin")).unwrap().set_len(17 * MB).unwrap();
    db.batch_execute("INSERT INTO study_files (storage_path) VALUES ('scans/oct-huge.bin')").await.unwrap();
    standin.clear_log();
    for _ in 0..2 {
        let r = run().await.expect("a file too large does not fail the cycle");
        assert_eq!((r.uploaded, r.waiting), (0, 1), "{r:?}");
    }
    assert!(!standin.log().iter().any(|l| l.path.contains("oct-huge")), "no transfer was tried: {:?}", standin.log());
    let s = store.files_summary().await.unwrap();
    assert_eq!((s.pending, s.failed), (1, 1), "{s:?}");
    let why = s.first_error.unwrap_or_default();
    assert!(why.contains("[storage] max_file_mb") && why.contains(&(17 * MB).to_string()), "the reason names the key and the size: {why}");
    db.batch_execute("DELETE FROM study_files WHERE storage_path = 'scans/oct-huge.bin'").await.unwrap();
    assert_eq!(run().await.unwrap().removed, 1, "its row gone, the refused file goes too");
    assert_eq!(store.files_summary().await.unwrap().failed, 0, "and no longer counts as failed");

    // The row is deleted: with retention 0 its mirror file goes (the
    // object upstream is the cloud's to delete).
    db.batch_execute("DELETE FROM study_files WHERE storage_path = 'scans/oct-1.bin'").await.unwrap();
    let r = run().await.unwrap();
    assert_eq!(r.removed, 1, "{r:?}");
    assert!(!dir.path().join("scans/oct-1.bin").exists(), "a deleted row's file is removed");
    assert!(dir.path().join("pdf/visit-7.pdf").exists(), "other files stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_download_resumes_after_restart_and_its_mirror_equals_the_bucket() {
    use support::sync::{Mode, Pair, kill9, terminate};
    use support::wait_for;

    let standin = StorageStandIn::start(&[BUCKET]).await;
    let big = standin.put_large(BUCKET, "scans/oct-40.bin", 40 * MB).await;
    standin.put(BUCKET, "pdf/small.pdf", b"%PDF small").await;
    let mut pair = Pair::new("storage_kill9", Mode::Postgres).await;
    let mirror_dir = pair.dir.path().join("mirror");
    pair.sections = format!("[storage]\nbuckets = [\"{BUCKET}\"]\nlocal_dir = \"{}\"\nurl = \"{}\"\n", mirror_dir.display(), standin.url());
    pair.write_config();
    pair.init().await;
    pair.local
        .connect()
        .await
        .batch_execute(
            "CREATE TABLE study_files (id serial PRIMARY KEY, storage_path text);
             INSERT INTO study_files (storage_path) VALUES ('scans/oct-40.bin'), ('pdf/small.pdf');",
        )
        .await
        .unwrap();
    let env = [(centrovision_sync::config::SERVICE_KEY_ENV, SERVICE_KEY)];
    standin.set_slow(Some(Duration::from_millis(20)));
    let mut run = pair.spawn_run(&env);
    let scans = mirror_dir.join("scans");
    wait_for("a partial download in the mirror", Duration::from_secs(60), || {
        let scans = scans.clone();
        async move { temporaries(&scans).iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 4 * MB)).then_some(()) }
    })
    .await;
    kill9(&mut run);
    let target = scans.join("oct-40.bin");
    assert!(!target.exists(), "the download cut by kill -9 is not under the real name");

    standin.set_slow(None);
    standin.clear_log();
    let mut run = pair.spawn_run(&env);
    wait_for("the mirror equal to the bucket", Duration::from_secs(60), || {
        let (target, small) = (target.clone(), mirror_dir.join("pdf/small.pdf"));
        let big = big.clone();
        async move {
            let same = target.exists() && mirror::md5_file(&target).await.ok()? == big;
            (same && std::fs::read(small).ok()? == b"%PDF small").then_some(())
        }
    })
    .await;

    // A row names a file neither side has yet: it waits, `status` shows it,
    // and once it has waited past [storage] alert_after_minutes (60 by
    // default; its queue entry is made, and kept, two hours old here) the
    // running service raises files_waiting; when the row goes, the alert
    // is resolved.
    let local = &pair.local.connect().await;
    local
        .batch_execute(&format!(
            "INSERT INTO study_files (storage_path) VALUES ('pdf/later.pdf');
             INSERT INTO _sync_files (bucket, path, waiting_since) VALUES ('{BUCKET}', 'pdf/later.pdf', now() - interval '2 hours');"
        ))
        .await
        .unwrap();
    let (p, e) = (&pair, &env[..]);
    let text = wait_for("status showing the waiting file and the files_waiting alert", Duration::from_secs(30), || async move {
        // Should a cycle have read the rows just before the insert (and so
        // marked the entry gone, then pending from now), age it again.
        let old = "UPDATE _sync_files SET waiting_since = now() - interval '2 hours'
                   WHERE path = 'pdf/later.pdf' AND state = 'pending' AND waiting_since > now() - interval '1 hour'";
        local.batch_execute(old).await.unwrap();
        let t = String::from_utf8_lossy(&p.exec(&["status"], e).await.stdout).into_owned();
        (t.contains("study files: 1 waiting to move") && t.contains("files_waiting")).then_some(t)
    })
    .await;
    assert!(text.contains("oldest waiting"), "status says how long the oldest file waits: {text}");
    local.batch_execute("DELETE FROM study_files WHERE storage_path = 'pdf/later.pdf'").await.unwrap();
    wait_for("the alert resolved once nothing waits", Duration::from_secs(30), || async move {
        let t = String::from_utf8_lossy(&p.exec(&["status"], e).await.stdout).into_owned();
        (t.contains("study files: 0 waiting to move") && !t.contains("files_waiting")).then_some(())
    })
    .await;
    terminate(&mut run);
    let resumed = standin.log().iter().filter(|l| l.method == "GET" && l.path.ends_with("oct-40.bin")).find_map(|l| l.range_start);
    assert!(resumed.is_some_and(|r| r >= 4 * MB), "the restarted service resumed the partial file: {:?}", standin.log());
    assert!(temporaries(&scans).is_empty(), "no temporary file left");

    // The operator's view: status, then verify --files (exit 0 equal, 1 not).
    let out = pair.exec(&["status"], &env).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("study files: 0 waiting to move"), "status shows the file queue: {text}");
    let out = pair.exec(&["verify", "--files"], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::remove_file(mirror_dir.join("pdf/small.pdf")).unwrap();
    let out = pair.exec(&["verify", "--files"], &env).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a missing mirror file is a difference: {text}");
    assert!(text.contains(&format!("only upstream: {BUCKET}/pdf/small.pdf")), "and it is named: {text}");
}

//! The persisted transfer queue (`_sync_files`) and one cycle of it: what
//! moves which way, decided from what each side holds.
//!
//! A cycle: read the object paths the local `[storage] table` names, make
//! them known to the queue (new ones pending, the others gone), list each
//! bucket once, then for each file:
//!
//! - only upstream → download (verified, renamed into place);
//! - only in the mirror → upload (never over an existing object: no upsert);
//! - both, equal (MD5) → synced;
//! - both, different: if the object is still the version last synced, the
//!   mirror changed → upload over it; otherwise both changed, and the
//!   conflict rule of rows decides (README, "The conflict rule": between
//!   writers the later stamp wins, on equal stamps the higher writer id).
//!   The mirror's version is stamped with its row's `updated_at` (the
//!   latest of the rows naming it) and this clinic's id; the object with
//!   the stamp and writer its uploader attached as Storage user metadata
//!   (every upload of this service does: [`Stamp`]), capped at its upload
//!   time, or, for an object uploaded without one (the cloud app), the
//!   time Storage last wrote it, writer unknown. So an object uploaded late
//!   (its clinic was offline) competes with its row's stamp, not its upload
//!   time. The clinic's later (or equal and its id higher) → its file goes
//!   up over the object, whose version is first kept beside it as
//!   `<path>.conflict-<its writer|upstream>-<unix time>` (both sides);
//!   otherwise (earlier, equal, or no stamp on either side: the tie goes
//!   upstream) the mirror's version is uploaded as
//!   `<path>.conflict-<clinic_id>-<unix time>`, then renamed so locally,
//!   then the object is downloaded (a loser copy whose upload fails is
//!   not kept: the mirror stays as it was and the next cycle decides
//!   again). Each is logged and counted
//!   (`_sync_files.conflicts`, `status`). Nothing is overwritten silently;
//! - neither → stays pending (the file has not been written yet);
//! - gone (no row names it) → its mirror file is removed after
//!   `[storage] retention_days`.
//!
//! A transient error (Storage unreachable, 5xx) ends the cycle: the task
//! retries it later, resuming partial downloads. A file that no retry
//! fixes (too large, a path Storage refuses) is counted with its error and
//! the others go on.
//!
//! Why a periodic reconcile rather than hooks in the row paths: rows reach
//! `study_files` from the down path, from the clinic's app and from
//! `verify --repair`; reading the table's path column is one cheap query
//! and catches all of them, as well as files that appear later than their
//! rows.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::{ObjectInfo, Stamp, StorageClient};
use super::mirror;
use crate::config::Storage;
use crate::error::{Class, ErrorKind, Result, SyncError};
use crate::store::Store;
use crate::store::files::FileEntry;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    pub downloaded: u64,
    pub uploaded: u64,
    pub removed: u64,
    pub conflicts: u64,
    /// Bytes that crossed the network either way.
    pub bytes: u64,
    /// Files still pending after the cycle.
    pub waiting: u64,
}

/// Where a row's value lives: (bucket, object path). With several buckets
/// a value starts with its bucket's name (`b/scans/x.bin`); otherwise it is
/// the path in the first bucket.
pub fn locate<'a>(cfg: &'a Storage, value: &'a str) -> (&'a str, &'a str) {
    if cfg.buckets.len() > 1
        && let Some((b, rest)) = value.split_once('/')
        && let Some(bucket) = cfg.buckets.iter().find(|x| *x == b)
    {
        return (bucket, rest);
    }
    (&cfg.buckets[0], value)
}

/// The mirror file of an object: `<local_dir>/<value>` (the row's value).
fn mirror_file(cfg: &Storage, bucket: &str, path: &str) -> Result<std::path::PathBuf> {
    if cfg.buckets.len() > 1 && bucket != cfg.buckets[0] {
        mirror::local_path(&cfg.local_dir, &format!("{bucket}/{path}"))
    } else {
        mirror::local_path(&cfg.local_dir, path)
    }
}

fn stat(p: &Path) -> Option<(u64, i64)> {
    let m = std::fs::metadata(p).ok().filter(|m| m.is_file())?;
    let mtime = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos() as i64;
    Some((m.len(), mtime))
}

/// One pass over the queue; see the module docs.
pub async fn cycle(store: &Store<'_>, client: &StorageClient, cfg: &Storage, schema: &str, clinic_id: &str) -> Result<CycleReport> {
    let values = store.storage_paths(schema, &cfg.table, &cfg.path_column).await?;
    let (mut buckets, mut paths) = (Vec::new(), Vec::new());
    for v in &values {
        let (b, p) = locate(cfg, v);
        buckets.push(b.to_string());
        paths.push(p.to_string());
    }
    store.files_reconcile(&buckets, &paths).await?;
    let mut listing: HashMap<(String, String), ObjectInfo> = HashMap::new();
    for b in &cfg.buckets {
        for l in client.list(b, "").await? {
            listing.insert((b.clone(), l.path), l.info);
        }
    }
    let mut report = CycleReport::default();
    let retention = Duration::from_secs(cfg.retention_days * 86_400);
    for entry in store.files_all().await? {
        let target = match mirror_file(cfg, &entry.bucket, &entry.path) {
            Ok(t) => t,
            Err(e) => {
                store.file_failed(&entry.bucket, &entry.path, &e.to_string()).await?;
                continue;
            }
        };
        if entry.state == "gone" {
            if entry.age_seconds as u64 >= retention.as_secs() {
                match tokio::fs::remove_file(&target).await {
                    Ok(()) => report.removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(super::client::io_error("removing a mirror file", e)),
                }
                store.file_forget(&entry.bucket, &entry.path).await?;
            }
            continue;
        }
        let up = listing.get(&(entry.bucket.clone(), entry.path.clone()));
        let local = stat(&target);
        if entry.state == "synced" {
            let same_up = up.is_some_and(|u| u.etag == entry.etag);
            let same_local = local.is_some_and(|(s, m)| Some(s as i64) == entry.size && Some(m) == entry.local_mtime);
            if same_up && same_local {
                continue;
            }
            store.file_pending(&entry.bucket, &entry.path, up.map(|u| u.size as i64)).await?;
        }
        match one(store, client, cfg, schema, &entry, &target, up, local, clinic_id, &mut report).await {
            Ok(true) => {}
            Ok(false) => report.waiting += 1,
            Err(e) if e.class() == Class::Data => {
                // Logged once per distinct failure, not every cycle; it
                // stays pending (counted, shown in status) and no transfer
                // is tried while the cause holds.
                let msg = e.to_string();
                if entry.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(bucket = %entry.bucket, error = %e, "a study file cannot be moved; the others go on");
                    store.file_failed(&entry.bucket, &entry.path, &msg).await?;
                }
                report.waiting += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
        if let Some((size, mtime)) = stat(&target)
            && let Some(info) = client.info(&entry.bucket, &entry.path).await?
            && info.size == size
        {
            store.file_synced(&entry.bucket, &entry.path, info.etag.as_deref(), size as i64, mtime).await?;
        }
    }
    Ok(report)
}

/// Moves one pending file; false when there is nothing to move yet.
#[allow(clippy::too_many_arguments, reason = "one file's whole situation; called once, from the cycle")]
async fn one(
    store: &Store<'_>,
    client: &StorageClient,
    cfg: &Storage,
    schema: &str,
    entry: &FileEntry,
    target: &Path,
    up: Option<&ObjectInfo>,
    local: Option<(u64, i64)>,
    clinic_id: &str,
    report: &mut CycleReport,
) -> Result<bool> {
    let (bucket, path) = (entry.bucket.as_str(), entry.path.as_str());
    let too_large = |size: u64| {
        SyncError::new(
            ErrorKind::RejectedRow,
            format!("study file of {size} bytes exceeds [storage] max_file_mb ({} MB): not moved", cfg.max_file_bytes / (1024 * 1024)),
        )
        .with_hint("raise [storage] max_file_mb to mirror it")
    };
    match (local, up) {
        (None, None) => Ok(false),
        (None, Some(u)) => {
            if u.size > cfg.max_file_bytes {
                return Err(too_large(u.size));
            }
            let f = mirror::download(client, bucket, path, target, u).await?;
            report.downloaded += 1;
            report.bytes += f.received;
            Ok(true)
        }
        (Some((size, _)), None) => {
            if size > cfg.max_file_bytes {
                return Err(too_large(size));
            }
            let ours = row_stamp(store, cfg, schema, entry, clinic_id).await?;
            upload(store, client, entry, target, false, &ours).await?;
            report.uploaded += 1;
            report.bytes += size;
            Ok(true)
        }
        (Some((size, _)), Some(u)) => {
            let md5 = mirror::md5_file(target).await?;
            if u.md5().is_some_and(|m| m.eq_ignore_ascii_case(&md5)) || (u.md5().is_none() && u.size == size) {
                return Ok(true);
            }
            let ours = row_stamp(store, cfg, schema, entry, clinic_id).await?;
            if entry.etag.is_some() && entry.etag == u.etag {
                // Upstream is still what was last synced: the mirror changed.
                upload(store, client, entry, target, true, &ours).await?;
                report.uploaded += 1;
                report.bytes += size;
                return Ok(true);
            }
            // Both changed (or never synced and different): the rule of rows.
            // The listing has no user metadata: ask for the object's stamp.
            let Some(fresh) = client.info(bucket, path).await? else {
                return Ok(false); // gone meanwhile: only the mirror has it now
            };
            let u = &fresh;
            let (theirs, their_writer) = u.conflict_stamp();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let beside = |writer: &str| {
                let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (format!("{path}.conflict-{writer}-{now}"), target.with_file_name(format!("{name}.conflict-{writer}-{now}")))
            };
            let clinic_wins = match (ours.at, theirs) {
                (Some(o), Some(t)) => o > t || (o == t && their_writer.is_some_and(|w| clinic_id.as_bytes() > w.as_bytes())),
                _ => false,
            };
            if clinic_wins {
                // The clinic's version is later: upstream's is kept beside
                // it (downloaded, uploaded under the loser's name, with its
                // stamp), then the clinic's goes up over the object.
                let (loser_path, loser) = beside(their_writer.filter(|w| safe_writer(w)).unwrap_or("upstream"));
                let f = mirror::download(client, bucket, path, &loser, u).await?;
                if let Err(e) = plain_upload(client, bucket, &loser_path, &loser, u.stamp.as_ref()).await {
                    // Not kept upstream: no local-only copy either (the
                    // next cycle decides again, under a new name).
                    let _ = tokio::fs::remove_file(&loser).await;
                    return Err(e);
                }
                upload(store, client, entry, target, true, &ours).await?;
                tracing::warn!(
                    bucket,
                    "a study file changed on both sides: the clinic's version is later and kept, upstream's kept beside it"
                );
                store.file_conflict(bucket, path).await?;
                report.conflicts += 1;
                report.uploaded += 1;
                report.bytes += f.received + u.size + size;
                return Ok(true);
            }
            // The clinic's version goes up under the loser's name before it
            // moves aside: should the upload fail (the link drops), the
            // mirror is as it was and the next cycle decides again, instead
            // of the loser staying only in the mirror.
            let (loser_path, loser) = beside(clinic_id);
            plain_upload(client, bucket, &loser_path, target, Some(&ours)).await?;
            tokio::fs::rename(target, &loser).await.map_err(|e| super::client::io_error("keeping a conflicting file", e))?;
            tracing::warn!(bucket, "a study file changed on both sides: upstream's version is later and kept, the clinic's kept beside it");
            let f = mirror::download(client, bucket, path, target, u).await?;
            store.file_conflict(bucket, path).await?;
            report.conflicts += 1;
            report.downloaded += 1;
            report.bytes += f.received + size;
            Ok(true)
        }
    }
}

/// The mirror's side under the conflict rule: the latest `updated_at` of
/// the rows naming the file, and this clinic.
async fn row_stamp(store: &Store<'_>, cfg: &Storage, schema: &str, entry: &FileEntry, clinic_id: &str) -> Result<Stamp> {
    let value = if entry.bucket == cfg.buckets[0] { entry.path.clone() } else { format!("{}/{}", entry.bucket, entry.path) };
    let at = store.storage_stamp(schema, &cfg.table, &cfg.path_column, &value).await?;
    Ok(Stamp { at, writer: clinic_id.to_string() })
}

/// Whether a writer id read from an object's metadata may go into a file
/// name (`[sync] clinic_id` values always can; metadata is anyone's).
fn safe_writer(w: &str) -> bool {
    !w.is_empty() && w.len() <= 64 && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
}

/// Uploads a file named by a row, with its stamp. A large one goes by TUS,
/// its upload URL recorded first, so a cut (or a crash) resumes from the
/// server's offset instead of starting over (with the stamp given when it
/// was created). An object that appeared meanwhile (409) is left for the
/// next cycle to compare, never overwritten.
async fn upload(store: &Store<'_>, client: &StorageClient, entry: &FileEntry, file: &Path, upsert: bool, stamp: &Stamp) -> Result<()> {
    let (bucket, path) = (entry.bucket.as_str(), entry.path.as_str());
    let Some((len, mtime)) = stat(file) else { return Ok(()) };
    if !StorageClient::resumable(len) {
        return appeared(client.upload(bucket, path, file, upsert, Some(stamp)).await);
    }
    let of = format!("{len}:{mtime}");
    let known = match (&entry.upload_url, &entry.upload_of) {
        (Some(u), Some(o)) if *o == of => reqwest::Url::parse(u).ok(),
        _ => None,
    };
    if let Some(url) = known {
        match client.tus_send(&url, file, len).await {
            // The server forgot it (expired, or finished meanwhile): start over.
            Err(e) if e.code.as_deref() == Some("404") => {}
            r => return appeared(r),
        }
    }
    let url = appeared(client.tus_create(bucket, path, len, upsert, Some(stamp)).await)?;
    store.file_upload_started(bucket, path, url.as_str(), &of).await?;
    appeared(client.tus_send(&url, file, len).await)
}

/// A conflict's loser, under its own new name, with its version's stamp.
async fn plain_upload(client: &StorageClient, bucket: &str, path: &str, file: &Path, stamp: Option<&Stamp>) -> Result<()> {
    appeared(client.upload(bucket, path, file, false, stamp).await)
}

fn appeared<T>(r: Result<T>) -> Result<T> {
    match r {
        Err(e) if e.code.as_deref() == Some("409") => {
            Err(SyncError::new(ErrorKind::Busy, "storage upload: the object appeared upstream meanwhile; compared again on the next cycle"))
        }
        r => r,
    }
}

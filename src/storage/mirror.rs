//! The local copy of the bucket: where an object lives on disk, and how a
//! download becomes visible.
//!
//! Rules:
//!
//! - **Never a half file under the real name.** A download goes to a hidden
//!   temporary file beside its target (`.<name>.<etag>.part`, same
//!   directory so the rename is atomic), is checked against the object's
//!   info (size, and the MD5 — hashed as the bytes arrive — when the
//!   ETag is one), fsynced, renamed, and
//!   the directory fsynced. A check that fails deletes the temporary file.
//! - **Resumable.** The temporary file is named by the object's version
//!   (its ETag), so an interrupted download of the same version continues
//!   from the temporary file's length with a `Range` request; a new version
//!   starts a new file.
//! - **Inside the mirror only.** An object path with `..`, a leading `/` or
//!   an empty segment is refused: a row's value never names a file outside
//!   `[storage] local_dir`.

use std::path::{Component, Path, PathBuf};

use md5::{Digest, Md5};
use tokio::io::AsyncReadExt;

use super::client::{ObjectInfo, StorageClient, io_error};
use crate::error::{ErrorKind, Result, SyncError};

/// Prefix and suffix of temporary files; [`is_temporary`] names them.
const PART: &str = ".part";

/// The mirror file of `object` under `root`.
pub fn local_path(root: &Path, object: &str) -> Result<PathBuf> {
    let refuse = || SyncError::new(ErrorKind::RejectedRow, format!("storage path {object:?} is not a relative path inside the bucket"));
    if object.is_empty() || object.starts_with('/') || object.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(refuse());
    }
    let rel = Path::new(object);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse());
    }
    Ok(root.join(rel))
}

/// Whether a file name is one of the mirror's temporary files.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(PART)
}

fn temp_path(target: &Path, info: &ObjectInfo) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let version: String = info.etag.as_deref().unwrap_or("none").chars().filter(|c| c.is_ascii_alphanumeric()).take(40).collect();
    target.with_file_name(format!(".{name}.{version}{PART}"))
}

/// What one download did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes that came over the network in this call (less than the size
    /// when it resumed a temporary file).
    pub received: u64,
    /// Bytes already in the temporary file when it started.
    pub resumed_from: u64,
}

/// Downloads `bucket/object` (whose info is `info`) to `target`: a
/// temporary file, checked, fsynced, renamed. Resumes the temporary file
/// of the same version if one is there.
pub async fn download(client: &StorageClient, bucket: &str, object: &str, target: &Path, info: &ObjectInfo) -> Result<Fetched> {
    let dir = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(|e| io_error("creating a mirror directory", e))?;
    let temp = temp_path(target, info);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&temp)
        .await
        .map_err(|e| io_error("temporary file", e))?;
    let mut resumed_from = file.metadata().await.map_err(|e| io_error("temporary file", e))?.len();
    if resumed_from > info.size {
        file.set_len(0).await.map_err(|e| io_error("temporary file", e))?;
        resumed_from = 0;
    }
    // The MD5 is computed as the bytes arrive (the part kept from an
    // interrupted run is hashed first), so the check needs no second read.
    let mut hash = Md5::new();
    if resumed_from > 0 {
        hash_prefix(&temp, resumed_from, &mut hash).await?;
    }
    let received =
        if resumed_from == info.size && info.size > 0 { 0 } else { client.download_into(bucket, object, &mut file, &mut hash).await? };
    file.sync_all().await.map_err(|e| io_error("temporary file", e))?;
    drop(file);
    let md5: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = check(&temp, info, &md5).await {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e);
    }
    tokio::fs::rename(&temp, target).await.map_err(|e| io_error("renaming a downloaded file", e))?;
    sync_dir(dir).await;
    Ok(Fetched { received, resumed_from })
}

/// Feeds the first `len` bytes of `path` to `hash`.
async fn hash_prefix(path: &Path, len: u64, hash: &mut Md5) -> Result<()> {
    let f = tokio::fs::File::open(path).await.map_err(|e| io_error("temporary file", e))?;
    let mut f = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| io_error("temporary file", e))?;
        if n == 0 {
            return Ok(());
        }
        hash.update(&buf[..n]);
    }
}

/// The file's size and MD5 (`md5`, of what was written) against the
/// object's info.
async fn check(file: &Path, info: &ObjectInfo, md5: &str) -> Result<()> {
    let len = tokio::fs::metadata(file).await.map_err(|e| io_error("temporary file", e))?.len();
    if len != info.size {
        return Err(SyncError::new(
            ErrorKind::UpstreamUnreachable,
            format!("storage download: got {len} bytes where the object has {}; retrying", info.size),
        ));
    }
    if let Some(want) = info.md5()
        && !md5.eq_ignore_ascii_case(want)
    {
        return Err(SyncError::new(
            ErrorKind::UpstreamUnreachable,
            "storage download: the content does not match the object's checksum (changed or corrupted in transit); retrying",
        ));
    }
    Ok(())
}

/// The hex MD5 of a file, read in 1 MiB pieces.
pub async fn md5_file(path: &Path) -> Result<String> {
    let mut f = tokio::fs::File::open(path).await.map_err(|e| io_error("reading a mirror file", e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| io_error("reading a mirror file", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_path_never_names_a_file_outside_the_mirror() {
        let root = Path::new("/m");
        assert_eq!(local_path(root, "scans/oct-1.bin").unwrap(), Path::new("/m/scans/oct-1.bin"));
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a/../../b", ""] {
            assert_eq!(local_path(root, bad).unwrap_err().kind, ErrorKind::RejectedRow, "{bad:?}");
        }
        assert!(is_temporary(".oct-1.bin.abc.part"));
        assert!(!is_temporary("oct-1.bin"));
    }
}

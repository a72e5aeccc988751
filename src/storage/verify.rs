//! `verify --files`: the mirror against the buckets, file by file, by
//! listing each bucket (size and ETag) and walking `[storage] local_dir`.
//! A file is equal when sizes match and, when the ETag is an MD5, the
//! content's MD5 does. Temporary download files are not counted.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::client::{ObjectInfo, StorageClient, io_error};
use super::mirror;
use crate::config::Storage;
use crate::error::Result;

/// What differs; all empty when the mirror equals the buckets.
#[derive(Debug, Default, Serialize)]
pub struct FilesDiff {
    /// Objects checked (present on both sides).
    pub compared: usize,
    /// In a bucket, not in the mirror (`bucket/path`).
    pub only_upstream: Vec<String>,
    /// In the mirror, in no bucket (relative to `local_dir`).
    pub only_local: Vec<String>,
    /// On both sides with a different size or content.
    pub different: Vec<String>,
}

impl FilesDiff {
    pub fn equal(&self) -> bool {
        self.only_upstream.is_empty() && self.only_local.is_empty() && self.different.is_empty()
    }
}

/// Compares the mirror with the buckets.
pub async fn compare(client: &StorageClient, cfg: &Storage) -> Result<FilesDiff> {
    // Mirror-relative path → (bucket, object path, info).
    let mut upstream: BTreeMap<String, (String, String, ObjectInfo)> = BTreeMap::new();
    for (i, b) in cfg.buckets.iter().enumerate() {
        for l in client.list(b, "").await? {
            let rel = if i == 0 { l.path.clone() } else { format!("{b}/{}", l.path) };
            upstream.insert(rel, (b.clone(), l.path, l.info));
        }
    }
    let mut local = Vec::new();
    walk(&cfg.local_dir, "", &mut local).await?;
    let mut diff = FilesDiff::default();
    for (rel, size) in local {
        match upstream.remove(&rel) {
            None => diff.only_local.push(rel),
            Some((_, _, info)) => {
                diff.compared += 1;
                let same = info.size == size
                    && match info.md5() {
                        Some(want) => mirror::md5_file(&cfg.local_dir.join(&rel)).await?.eq_ignore_ascii_case(want),
                        None => true,
                    };
                if !same {
                    diff.different.push(rel);
                }
            }
        }
    }
    diff.only_upstream = upstream.into_values().map(|(b, p, _)| format!("{b}/{p}")).collect();
    Ok(diff)
}

/// Every regular file under `dir` (relative path, size), temporaries left out.
async fn walk(root: &Path, rel: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let mut rd = match tokio::fs::read_dir(&dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => return Ok(()),
        Err(e) => return Err(io_error("reading the mirror", e)),
    };
    while let Some(e) = rd.next_entry().await.map_err(|e| io_error("reading the mirror", e))? {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let meta = e.metadata().await.map_err(|e| io_error("reading the mirror", e))?;
        if meta.is_dir() {
            Box::pin(walk(root, &path, out)).await?;
        } else if meta.is_file() && !mirror::is_temporary(&name) {
            out.push((path, meta.len()));
        }
    }
    Ok(())
}

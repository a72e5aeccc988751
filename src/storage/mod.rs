//! Study files: the Supabase Storage objects that `study_files` rows name,
//! mirrored into `[storage] local_dir` so a clinic offline still has its
//! images and PDFs, and files written offline go up when the link is back.
//!
//! - [`client`]: the Storage REST API and TUS resumable uploads, streaming,
//!   with its one error classifier;
//! - [`mirror`]: object path → local file, and the download that is only
//!   visible under its real name once complete and verified;
//! - [`queue`]: the persisted queue (`_sync_files`) and one reconcile cycle
//!   (which file moves which way, conflicts, retention); the service runs
//!   it in its own task (`service::files`);
//! - [`verify`]: `verify --files`, the mirror against the buckets.
//!
//! Rules: a file is never held whole in memory; a half or corrupt download
//! is never under the real name; file transfers never block table sync.

pub mod client;
pub mod mirror;
pub mod queue;
pub mod verify;

pub use client::{Listed, ObjectInfo, Stamp, StorageClient};

/// What the study-files task reports to `/metrics`: counters since start,
/// and the queue as of its last cycle.
#[derive(Debug, Default)]
pub struct Counters {
    pub downloaded: std::sync::atomic::AtomicU64,
    pub uploaded: std::sync::atomic::AtomicU64,
    pub conflicts: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub pending: std::sync::atomic::AtomicI64,
    pub pending_bytes: std::sync::atomic::AtomicI64,
    pub oldest_waiting_seconds: std::sync::atomic::AtomicI64,
}

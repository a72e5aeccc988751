//! Study files: the Supabase Storage objects that `study_files` rows name,
//! mirrored into `[storage] local_dir` so a clinic offline still has its
//! images and PDFs, and files written offline go up when the link is back.
//!
//! - [`client`]: the Storage REST API and TUS resumable uploads, streaming,
//!   with its one error classifier;
//! - [`mirror`]: object path → local file, and the download that is only
//!   visible under its real name once complete and verified.
//!
//! Rules: a file is never held whole in memory; a half or corrupt download
//! is never under the real name; file transfers never block table sync.

pub mod client;
pub mod mirror;

pub use client::{Listed, ObjectInfo, StorageClient};

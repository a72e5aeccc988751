//! The Supabase Storage REST API as the mirror needs it: object info, list,
//! ranged download, upload (plain for small files, TUS 1.0.0 resumable for
//! large ones), delete.
//!
//! Rules:
//!
//! - **Never a whole file in memory.** Downloads are read chunk by chunk
//!   (`Response::chunk`) into a file; uploads hold at most two TUS chunks
//!   (6 MiB, the size Supabase requires for every chunk but the last): the
//!   one in flight and the next, read ahead; a plain upload streams the
//!   file in 256 KiB pieces (reqwest's `stream` feature).
//! - **`bandwidth_limit_mbps` paces every transfer**: downloads per chunk
//!   received, TUS per chunk sent, plain uploads per piece handed to the
//!   connection.
//! - **One classifier** ([`classify`]) turns a Storage answer into an
//!   [`ErrorKind`]: connect errors, 5xx and 429 are transient; 401/403 and a
//!   missing bucket need the operator; 400/413 are about the one file
//!   (`RejectedRow`: parked, the rest flows on).
//!   Storage puts the real status in its JSON body (`"statusCode":"404"`
//!   under HTTP 400 in some versions), so the body decides first.
//! - The service key goes in `apikey` and `Authorization: Bearer`, marked
//!   sensitive; URLs and messages never carry it.
//!
//! - **Stamps travel as user metadata.** Every upload carries its row's
//!   conflict stamp and writer as Storage user metadata
//!   (`{"centrovision_stamp": "<RFC 3339>", "centrovision_writer": "<clinic_id>"}`):
//!   base64 JSON in the `x-metadata` header of a plain upload, JSON under
//!   the `metadata` key of TUS's `Upload-Metadata`. Storage returns it only
//!   from `GET /object/info/...` (as `metadata`; `last_modified` is the
//!   upload time), neither in a listing nor on `HEAD`, so [`StorageClient::info`]
//!   is what reads it ([`ObjectInfo::conflict_stamp`]).
//!
//! Why no TUS crate: the crates.io TUS clients (`tus_client`, `tus-rs`) are
//! blocking or unmaintained and none speaks Supabase's metadata and 6 MiB
//! chunk rule; the protocol subset needed (create, PATCH, HEAD) is small.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::config::{Config, Secret};
use crate::error::{ErrorKind, Result, SyncError};
use crate::upstream::rest::transport_error;

/// Every TUS chunk but the last has exactly this size (Supabase's rule).
pub const TUS_CHUNK: usize = 6 * 1024 * 1024;
/// Files up to this size go up in one plain POST.
pub const PLAIN_UPLOAD_MAX: u64 = 6 * 1024 * 1024;
/// A plain upload's body is read and paced in pieces of this size.
const PLAIN_PIECE: usize = 256 * 1024;

/// What Storage says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Storage's ETag without quotes: the MD5 of the content for a plain
    /// upload (`<md5>-<parts>` for a multipart one).
    pub etag: Option<String>,
    /// When Storage last wrote it (`last_modified` / `updated_at`).
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
    /// The stamp its uploader attached (user metadata); only
    /// [`StorageClient::info`] reads it, a listing never has it.
    pub stamp: Option<Stamp>,
}

/// The conflict stamp of a file version: its row's `updated_at` and the
/// writer (`[sync] clinic_id`) that uploaded it. Sent with every upload as
/// Storage user metadata, read back by [`StorageClient::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// None when the row has no `updated_at` (the upload time stands in).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    pub writer: String,
}

/// User metadata keys (namespaced: the cloud app may set its own).
const META_STAMP: &str = "centrovision_stamp";
const META_WRITER: &str = "centrovision_writer";

impl Stamp {
    /// The user metadata JSON Storage keeps for the object.
    fn to_json(&self) -> String {
        let mut m = serde_json::Map::new();
        if let Some(at) = self.at {
            m.insert(META_STAMP.into(), at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        }
        m.insert(META_WRITER.into(), self.writer.clone().into());
        serde_json::Value::Object(m).to_string()
    }

    /// From an object's user metadata; None without our writer key (an
    /// object the cloud app or an older version of this service uploaded).
    fn from_json(v: &serde_json::Value) -> Option<Stamp> {
        let writer = v.get(META_WRITER)?.as_str()?.to_string();
        Some(Stamp { at: time(v.get(META_STAMP).and_then(|s| s.as_str())), writer })
    }
}

impl ObjectInfo {
    /// The object's side under the conflict rule: its uploader's stamp and
    /// writer when it carries one, never later than Storage's own upload
    /// time (so a clinic clock running fast gains nothing, rule 4's intent);
    /// otherwise the upload time, writer unknown.
    pub fn conflict_stamp(&self) -> (Option<chrono::DateTime<chrono::Utc>>, Option<&str>) {
        match &self.stamp {
            Some(s) => {
                let at = match (s.at, self.modified) {
                    (Some(a), Some(m)) => Some(a.min(m)),
                    (a, m) => a.or(m),
                };
                (at, Some(s.writer.as_str()))
            }
            None => (self.modified, None),
        }
    }

    /// The content's MD5 as hex, when the ETag is one.
    pub fn md5(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub info: ObjectInfo,
}

pub struct StorageClient {
    http: reqwest::Client,
    base: Url,
    /// Bytes per second (0: unlimited).
    bandwidth: u64,
}

/// Storage's error body: `{"statusCode":"404","error":"not_found","message":"Object not found"}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    error: Option<String>,
    message: Option<String>,
}

/// `GET /object/info/...`: here `metadata` is the object's *user*
/// metadata (any JSON, or null), unlike a listing's system `metadata`.
#[derive(Debug, Deserialize)]
struct InfoBody {
    size: Option<u64>,
    etag: Option<String>,
    metadata: Option<serde_json::Value>,
    last_modified: Option<String>,
    updated_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListEntry {
    name: String,
    id: Option<String>,
    metadata: Option<ListMetadata>,
    updated_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListMetadata {
    size: Option<u64>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    #[serde(rename = "lastModified")]
    last_modified: Option<String>,
}

/// Storage's times are RFC 3339 (`2024-05-01T10:00:00.123Z`).
fn time(t: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t?).ok().map(|t| t.to_utc())
}

fn unquote(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

impl StorageClient {
    pub fn from_config(cfg: &Config) -> Result<Option<StorageClient>> {
        let Some(s) = &cfg.storage else { return Ok(None) };
        let mut base = Url::parse(&s.url).map_err(|e| SyncError::new(ErrorKind::Config, format!("[storage] url: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .default_headers(auth_headers(&cfg.supabase.service_key)?)
            .connect_timeout(cfg.supabase.connect_timeout)
            // No overall timeout: a 1 GB object takes long. A stalled
            // transfer is cut by the read timeout instead.
            .read_timeout(cfg.supabase.request_timeout.max(Duration::from_secs(30)))
            .user_agent(concat!("centrovision-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SyncError::new(ErrorKind::Config, format!("cannot build the HTTP client: {e}")))?;
        Ok(Some(StorageClient { http, base, bandwidth: s.bandwidth_bytes_per_second }))
    }

    fn url(&self, parts: &[&str], object: &str) -> Url {
        let mut u = self.base.clone();
        {
            let mut seg = u.path_segments_mut().expect("http(s) URL");
            seg.pop_if_empty();
            seg.extend(parts);
            seg.extend(object.split('/').filter(|p| !p.is_empty()));
        }
        u
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| transport_error(what, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        let mut e = classify(what, status, &body);
        e.retry_after = retry_after;
        Err(e)
    }

    /// The object's size and ETag; None when it does not exist.
    pub async fn info(&self, bucket: &str, path: &str) -> Result<Option<ObjectInfo>> {
        let what = "storage (object info)";
        match self.send(what, self.http.get(self.url(&["object", "info", bucket], path))).await {
            Ok(resp) => {
                let b: InfoBody = resp
                    .json()
                    .await
                    .map_err(|e| SyncError::new(ErrorKind::Decode, format!("{what}: unexpected answer: {e}")).with_source(e))?;
                let modified = time(b.last_modified.as_deref()).or_else(|| time(b.updated_at.as_deref()));
                let stamp = b.metadata.as_ref().and_then(Stamp::from_json);
                Ok(Some(ObjectInfo { size: b.size.unwrap_or(0), etag: b.etag.map(|e| unquote(&e)), modified, stamp }))
            }
            Err(e) if e.code.as_deref() == Some("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix` (recursively; Storage lists one level
    /// at a time), sorted by path.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Listed>> {
        let what = "storage (list)";
        let mut out = Vec::new();
        let mut dirs = vec![prefix.trim_matches('/').to_string()];
        while let Some(dir) = dirs.pop() {
            let mut offset = 0;
            loop {
                let body =
                    serde_json::json!({ "prefix": dir, "limit": 1000, "offset": offset, "sortBy": { "column": "name", "order": "asc" } });
                let resp = self.send(what, self.http.post(self.url(&["object", "list", bucket], "")).json(&body)).await?;
                let entries: Vec<ListEntry> = resp
                    .json()
                    .await
                    .map_err(|e| SyncError::new(ErrorKind::Decode, format!("{what}: unexpected answer: {e}")).with_source(e))?;
                let n = entries.len();
                for e in entries {
                    let path = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
                    match (e.id, e.metadata) {
                        (Some(_), Some(m)) => out.push(Listed {
                            path,
                            info: ObjectInfo {
                                size: m.size.unwrap_or(0),
                                etag: m.etag.map(|t| unquote(&t)),
                                modified: time(m.last_modified.as_deref()).or_else(|| time(e.updated_at.as_deref())),
                                stamp: None,
                            },
                        }),
                        _ => dirs.push(path),
                    }
                }
                if n < 1000 {
                    break;
                }
                offset += n;
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Appends the object's bytes from `file`'s current length on (a
    /// `Range` request when it is not empty) until the end. Returns the
    /// bytes received.
    /// `hash` sees every byte written, in order (restarted with the file
    /// when the server sends the whole object instead of the range).
    pub async fn download_into(&self, bucket: &str, path: &str, file: &mut tokio::fs::File, hash: &mut md5::Md5) -> Result<u64> {
        let what = "storage (download)";
        let have = file.metadata().await.map_err(|e| io_error("temporary file", e))?.len();
        file.seek(std::io::SeekFrom::Start(have)).await.map_err(|e| io_error("temporary file", e))?;
        let mut req = self.http.get(self.url(&["object", bucket], path));
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = self.send(what, req).await?;
        if have > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            // The server sent the whole object: start over.
            file.set_len(0).await.map_err(|e| io_error("temporary file", e))?;
            file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| io_error("temporary file", e))?;
            *hash = md5::Md5::default();
        }
        let mut got = 0u64;
        let pace = Pace::new(self.bandwidth);
        // The MD5 is computed on a blocking thread while the next bytes
        // arrive (it costs about as much CPU as receiving them); chunks are
        // reference-counted, so nothing is copied.
        let (to_hash, chunks) = std::sync::mpsc::sync_channel::<bytes::Bytes>(64);
        let mut hasher = std::mem::take(hash);
        let hashing = tokio::task::spawn_blocking(move || {
            for c in chunks {
                md5::Digest::update(&mut hasher, &c);
            }
            hasher
        });
        // Write-back starts while the download runs (a background flush every
        // 32 MiB on a second handle of the file), so the fsync before the
        // rename finds little left to write.
        let early = std::sync::Arc::new(file.try_clone().await.map_err(|e| io_error("temporary file", e))?.into_std().await);
        let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
        let mut unflushed = 0u64;
        // The network hands over small chunks; the file gets 1 MiB writes.
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let outcome = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = file.write_all(&chunk).await {
                        break Err(io_error("temporary file", e));
                    }
                    got += chunk.len() as u64;
                    unflushed += chunk.len() as u64;
                    if unflushed >= EARLY_FLUSH_BYTES && flushing.as_ref().is_none_or(|h| h.is_finished()) {
                        unflushed = 0;
                        let f = early.clone();
                        flushing = Some(tokio::task::spawn_blocking(move || {
                            let _ = f.sync_data();
                        }));
                    }
                    // A full channel blocks this task briefly: hashing is
                    // the slower stage, and memory stays bounded.
                    if let Err(std::sync::mpsc::TrySendError::Full(c)) = to_hash.try_send(chunk) {
                        let tx = to_hash.clone();
                        let _ = tokio::task::spawn_blocking(move || tx.send(c)).await;
                    }
                    pace.after(got).await;
                }
                Ok(None) => break Ok(got),
                Err(e) => break Err(transport_error(what, &e)),
            }
        };
        drop(to_hash);
        if let Some(h) = flushing {
            let _ = h.await;
        }
        *hash = hashing.await.map_err(|e| io_error("hashing the download", std::io::Error::other(e)))?;
        // Also after a cut: what arrived is on disk to resume from (a tokio
        // file writes in the background until flushed).
        file.flush().await.map_err(|e| io_error("temporary file", e))?;
        outcome
    }

    /// Uploads `file` as `bucket/path`: one POST up to 6 MiB, else TUS;
    /// `stamp` goes with it as user metadata.
    /// Without `upsert` an existing object is a 409 (`ErrorKind::Refused`,
    /// code "409").
    pub async fn upload(&self, bucket: &str, path: &str, file: &Path, upsert: bool, stamp: Option<&Stamp>) -> Result<()> {
        let len = tokio::fs::metadata(file).await.map_err(|e| io_error("mirror file", e))?.len();
        if len <= PLAIN_UPLOAD_MAX {
            let f = tokio::fs::File::open(file).await.map_err(|e| io_error("mirror file", e))?;
            let mut req = self
                .http
                .post(self.url(&["object", bucket], path))
                .header("x-upsert", if upsert { "true" } else { "false" })
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(paced_read(f, len, Pace::new(self.bandwidth))));
            if let Some(s) = stamp {
                req = req.header("x-metadata", base64::engine::general_purpose::STANDARD.encode(s.to_json()));
            }
            self.send("storage (upload)", req).await?;
            return Ok(());
        }
        let location = self.tus_create(bucket, path, len, upsert, stamp).await?;
        self.tus_send(&location, file, len).await
    }

    /// Whether a file of this size goes up by TUS.
    pub fn resumable(len: u64) -> bool {
        len > PLAIN_UPLOAD_MAX
    }

    /// Starts a TUS upload (`stamp` as the object's user metadata, set
    /// when it completes); returns its URL.
    pub async fn tus_create(&self, bucket: &str, path: &str, len: u64, upsert: bool, stamp: Option<&Stamp>) -> Result<Url> {
        let what = "storage (resumable upload)";
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut meta = format!("bucketName {},objectName {},contentType {}", b64(bucket), b64(path), b64("application/octet-stream"));
        if let Some(s) = stamp {
            meta.push_str(&format!(",metadata {}", b64(&s.to_json())));
        }
        let req = self
            .http
            .post(self.url(&["upload", "resumable"], ""))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", len.to_string())
            .header("Upload-Metadata", meta)
            .header("x-upsert", if upsert { "true" } else { "false" });
        let resp = self.send(what, req).await?;
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SyncError::new(ErrorKind::Contract, format!("{what}: no Location in the answer")))?;
        self.base.join(loc).map_err(|e| SyncError::new(ErrorKind::Contract, format!("{what}: bad Location: {e}")))
    }

    /// The bytes of a TUS upload the server has (`HEAD`, `Upload-Offset`).
    pub async fn tus_offset(&self, location: &Url) -> Result<u64> {
        let what = "storage (resumable upload offset)";
        let resp = self.send(what, self.http.head(location.clone()).header("Tus-Resumable", "1.0.0")).await?;
        resp.headers()
            .get("Upload-Offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| SyncError::new(ErrorKind::Contract, format!("{what}: no Upload-Offset")))
    }

    /// Sends `file` from the server's offset on, 6 MiB per PATCH.
    ///
    /// The next chunk is read from disk while the current one is in flight
    /// (at most two chunks, 12 MiB, in memory), in one blocking read each;
    /// TUS allows one PATCH at a time per upload, so the round trips
    /// themselves cannot overlap. Measured in benches/storage.rs.
    pub async fn tus_send(&self, location: &Url, file: &Path, len: u64) -> Result<()> {
        let what = "storage (resumable upload)";
        let mut offset = self.tus_offset(location).await?;
        let f = std::fs::File::open(file).map_err(|e| io_error("mirror file", e))?;
        let pace = Pace::new(self.bandwidth);
        let mut sent = 0u64;
        let mut next = (offset < len).then(|| read_chunk(f, offset, len));
        while let Some(pending) = next.take() {
            let (f, at, buf) =
                pending.await.map_err(|e| SyncError::new(ErrorKind::Refused, format!("{what}: reading the file: {e}")))??;
            let n = buf.len() as u64;
            let after = at + n;
            // Read ahead while this chunk travels.
            let ahead = (after < len).then(|| read_chunk(f, after, len));
            let req = self
                .http
                .patch(location.clone())
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", at.to_string())
                .header(reqwest::header::CONTENT_TYPE, "application/offset+octet-stream")
                .body(buf);
            let resp = self.send(what, req).await?;
            offset = resp
                .headers()
                .get("Upload-Offset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| SyncError::new(ErrorKind::Contract, format!("{what}: no Upload-Offset after PATCH")))?;
            sent += n;
            pace.after(sent).await;
            next = match ahead {
                Some(a) if offset == after => Some(a),
                // The server kept another amount than sent: read from where
                // it stands (the read-ahead is of the wrong place).
                Some(a) if offset < len => {
                    let (f, _, _) = a.await.map_err(|e| SyncError::new(ErrorKind::Refused, format!("{what}: reading the file: {e}")))??;
                    Some(read_chunk(f, offset, len))
                }
                _ => None,
            };
        }
        Ok(())
    }

    pub async fn delete(&self, bucket: &str, path: &str) -> Result<()> {
        match self.send("storage (delete)", self.http.delete(self.url(&["object", bucket], path))).await {
            Err(e) if e.code.as_deref() == Some("404") => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

/// Reads the TUS chunk at `at` in one blocking call (`tokio::fs` would
/// split it into 2 MiB operations); hands the file back for the next one.
fn read_chunk(mut f: std::fs::File, at: u64, len: u64) -> tokio::task::JoinHandle<Result<(std::fs::File, u64, Vec<u8>)>> {
    // Allocated here, on the runtime's thread, not in the blocking pool:
    // glibc gives each blocking thread its own arena, and freed 6 MiB
    // buffers there stay resident (peak RSS 91 MB instead of 22 MB for a
    // 256 MiB upload).
    let mut buf = vec![0u8; (len - at).min(TUS_CHUNK as u64) as usize];
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        f.seek(std::io::SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| io_error("mirror file", e))?;
        Ok((f, at, buf))
    })
}

/// The body of a plain upload: `len` bytes of `f` in pieces of
/// [`PLAIN_PIECE`], each handed over only once the limit allows it (so the
/// request as a whole takes at least `len / limit`); one piece in memory.
/// A file shorter than `len` ends the stream early, which the HTTP client
/// reports as a failed (retried) request, never a short object.
fn paced_read(
    f: tokio::fs::File,
    len: u64,
    pace: Pace,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold((f, 0u64, pace), move |(mut f, sent, pace)| async move {
        if sent >= len {
            return None;
        }
        let mut buf = vec![0u8; (len - sent).min(PLAIN_PIECE as u64) as usize];
        let n = match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => return Some((Err(e), (f, len, pace))),
        };
        buf.truncate(n);
        let sent = sent + n as u64;
        pace.after(sent).await;
        Some((Ok(bytes::Bytes::from(buf)), (f, sent, pace)))
    })
}

/// Sleeps so that `bytes` since `start` do not exceed the limit.
struct Pace {
    start: tokio::time::Instant,
    per_second: u64,
}

impl Pace {
    fn new(per_second: u64) -> Pace {
        Pace { start: tokio::time::Instant::now(), per_second }
    }
    async fn after(&self, bytes: u64) {
        if self.per_second == 0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(bytes as f64 / self.per_second as f64);
        tokio::time::sleep_until(due).await;
    }
}

fn auth_headers(key: &Secret) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    let bad = || SyncError::new(ErrorKind::Config, "[supabase] service_key contains characters that cannot be sent in a header");
    let mut k = HeaderValue::from_str(key.expose()).map_err(|_| bad())?;
    k.set_sensitive(true);
    h.insert("apikey", k);
    let mut b = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| bad())?;
    b.set_sensitive(true);
    h.insert(reqwest::header::AUTHORIZATION, b);
    Ok(h)
}

/// Bytes a download writes between two background flushes
/// ([`StorageClient::download_into`]).
const EARLY_FLUSH_BYTES: u64 = 32 << 20;

pub(crate) fn io_error(what: &str, e: std::io::Error) -> SyncError {
    SyncError::new(ErrorKind::Refused, format!("storage mirror: {what}: {e}"))
        .with_hint("check [storage] local_dir: it must exist, be writable by the service and have free space")
        .with_source(e)
}

/// The one place a Storage answer becomes an [`ErrorKind`]. The error's
/// `code` is Storage's status (from the body when it has one: some
/// versions answer HTTP 400 with `"statusCode":"404"`), or `NoSuchBucket`.
pub fn classify(what: &str, status: StatusCode, body: &str) -> SyncError {
    let parsed: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let code: u16 = match &parsed.status_code {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(status.as_u16()),
        Some(serde_json::Value::Number(n)) => n.as_u64().map_or(status.as_u16(), |n| n as u16),
        _ => status.as_u16(),
    };
    let message = parsed.message.unwrap_or_else(|| body.chars().take(200).collect());
    let error = parsed.error.unwrap_or_default();
    let full = format!("{what}: HTTP {} {error}: {message}", status.as_u16());
    let bucket_missing = error.eq_ignore_ascii_case("Bucket not found") || message.contains("Bucket not found");
    let (kind, hint): (ErrorKind, Option<&str>) = match code {
        401 => (ErrorKind::Auth, Some("Storage rejected the key: use the service_role key (Supabase → Settings → API), not the anon key")),
        403 => (ErrorKind::Privilege, Some("the key may not use this bucket; use the service_role key")),
        404 if bucket_missing => {
            (ErrorKind::MissingObject, Some("the bucket does not exist: create it in Supabase → Storage, or fix [storage] buckets"))
        }
        404 => (ErrorKind::MissingObject, None),
        408 => (ErrorKind::Timeout, None),
        429 => (ErrorKind::RateLimited, None),
        // About this one file: no retry changes it (unlike a 413 of a
        // batch, which the pusher splits), so it is parked, not retried.
        413 => (ErrorKind::RejectedRow, Some("the file exceeds the bucket's or project's upload limit")),
        409 => (ErrorKind::Refused, None),
        s if s >= 500 => (ErrorKind::UpstreamUnreachable, None),
        400 => (ErrorKind::RejectedRow, None),
        _ => (ErrorKind::Refused, None),
    };
    // A missing bucket is not a missing object: "NoSuchBucket", S3's name.
    let code = if bucket_missing { "NoSuchBucket".to_string() } else { code.to_string() };
    let mut e = SyncError::new(kind, full).with_code(code);
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Class;

    #[test]
    fn storage_answers_fall_in_the_three_classes_reading_the_body_status_first() {
        let c = |s: u16, body: &str| classify("t", StatusCode::from_u16(s).unwrap(), body);
        assert_eq!(c(503, "").class(), Class::Transient);
        assert_eq!(c(429, "").class(), Class::Transient);
        assert_eq!(c(401, r#"{"statusCode":"401","error":"Unauthorized","message":"Invalid JWT"}"#).class(), Class::Operator);
        assert_eq!(c(403, "").class(), Class::Operator);
        let bucket = c(400, r#"{"statusCode":"404","error":"Bucket not found","message":"Bucket not found"}"#);
        assert_eq!(
            (bucket.kind, bucket.class(), bucket.code.as_deref()),
            (ErrorKind::MissingObject, Class::Operator, Some("NoSuchBucket"))
        );
        let missing = c(400, r#"{"statusCode":"404","error":"not_found","message":"Object not found"}"#);
        assert_eq!(missing.code.as_deref(), Some("404"), "a 404 inside a 400 is a missing object");
        assert_eq!(c(413, r#"{"statusCode":"413","error":"Payload too large","message":"too large"}"#).class(), Class::Data);
        assert_eq!(c(400, r#"{"statusCode":"400","error":"InvalidKey","message":"bad key"}"#).class(), Class::Data);
    }

    #[test]
    fn an_objects_conflict_stamp_is_its_uploaders_capped_at_the_upload_time_else_the_upload_time() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let uploaded = t("2026-01-01T12:00:00Z");
        let info = |user: serde_json::Value| ObjectInfo { size: 1, etag: None, modified: Some(uploaded), stamp: Stamp::from_json(&user) };
        let ours = Stamp { at: Some(t("2026-01-01T10:00:00.123456Z")), writer: "clinic-a".into() };
        let sent: serde_json::Value = serde_json::from_str(&ours.to_json()).unwrap();
        assert_eq!(info(sent.clone()).stamp.as_ref(), Some(&ours), "what an upload sends reads back the same, to the microsecond");
        assert_eq!(info(sent).conflict_stamp(), (ours.at, Some("clinic-a")), "uploaded late: its row's stamp, not the upload time");
        let fast = serde_json::json!({ "centrovision_stamp": "2026-01-01T15:00:00Z", "centrovision_writer": "clinic-b" });
        assert_eq!(
            info(fast).conflict_stamp(),
            (Some(uploaded), Some("clinic-b")),
            "a stamp after the upload (a fast clock) counts as the upload time"
        );
        let app = serde_json::json!({ "owner": "cloud app", "centrovision_stamp": "2026-01-01T10:00:00Z" });
        assert_eq!(info(app).conflict_stamp(), (Some(uploaded), None), "without our writer key: the upload time, writer unknown");
        assert_eq!(info(serde_json::Value::Null).conflict_stamp(), (Some(uploaded), None));
    }
}

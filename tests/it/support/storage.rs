//! A stand-in for Supabase Storage (`/storage/v1`), backed by a temporary
//! directory: objects are real files, so a 200 MB object is a (sparse) file
//! streamed in pieces, never held in memory.
//!
//! What it answers, as Storage does (storage-api v1, the parts the mirror
//! uses):
//! - Auth: `apikey` and `Authorization: Bearer` must both carry the service
//!   key. Missing → HTTP 400 `{"statusCode":"403","error":"Unauthorized",
//!   "message":"headers must have required property 'authorization'"}`;
//!   another key (the anon key) → HTTP 400 `{"statusCode":"403",
//!   "error":"Unauthorized","message":"new row violates row-level security
//!   policy"}`. Errors always have Storage's shape `{statusCode, error,
//!   message}`; a missing object or bucket is HTTP 400 with `"statusCode":
//!   "404"` (what some versions answer), a duplicate upload HTTP 400 with
//!   `"statusCode":"409","error":"Duplicate"`.
//! - `GET /object/{bucket}/{path}` with `Range: bytes=N-` (206 and
//!   `Content-Range`), `GET /object/info/{bucket}/{path}` (`size`, `etag`),
//!   `POST /object/list/{bucket}` (`prefix`, `limit`, `offset`; one level,
//!   folders with `id: null`), `POST` (fails on an existing object unless
//!   `x-upsert: true`) and `PUT` `/object/{bucket}/{path}`, `DELETE`.
//! - TUS 1.0.0 at `/upload/resumable`: `POST` with `Upload-Length` and
//!   `Upload-Metadata` (base64 `bucketName`, `objectName`, `contentType`),
//!   `HEAD` (`Upload-Offset`), `PATCH` (`Upload-Offset` must match; every
//!   chunk but the last exactly 6 MiB, else 400); a chunk cut mid-way is not
//!   kept, as Supabase's S3 backend keeps only whole parts.
//! - ETag: the MD5 of the content (quoted), like a plain S3 upload; the time
//!   of the last write as `last_modified` (info) and `updated_at` /
//!   `metadata.lastModified` (list).
//! - User metadata (storage-api's `user_metadata`): a plain upload's
//!   `x-metadata` header (base64 of a JSON object; undecodable → none, as
//!   Storage's `parseUserMetadata`), a TUS upload's `metadata` key of
//!   `Upload-Metadata` (a JSON string; unparsable → none), set when the
//!   upload completes and replaced by the next write. Returned only by
//!   `GET /object/info/...`, as `metadata` (null when none); a listing's
//!   `metadata` is the system one, and `HEAD /object/{bucket}/{path}`
//!   answers only headers (`ETag`, `Content-Length`, `Last-Modified`).
//!
//! Fault injection: [`StorageStandIn::cut_next_download_after`] (the
//! connection drops after N body bytes), [`StorageStandIn::fail_next`]
//! (N answers of HTTP 503), [`StorageStandIn::fail_next_uploads`] (N plain
//! uploads answered 503), [`StorageStandIn::corrupt_next_download`] (one
//! byte flipped in flight), [`StorageStandIn::set_offline`] (every request
//! 503 until back), [`StorageStandIn::set_slow`] (a pause per 256 KiB).
//! [`StorageStandIn::log`] lists each request with the Range start asked
//! and the body bytes actually served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use futures_util::StreamExt as _;
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The key the stand-in accepts (the "service_role" key).
pub const SERVICE_KEY: &str = "storage-standin-service-key";
/// A key it refuses, like an anon key on a private bucket.
pub const ANON_KEY: &str = "storage-standin-anon-key";
const PIECE: usize = 256 * 1024;
const TUS_CHUNK: u64 = 6 * 1024 * 1024;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// `Range: bytes=N-` start, when asked.
    pub range_start: Option<u64>,
    /// Body bytes sent (downloads) or received (uploads).
    pub bytes: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Meta {
    size: u64,
    etag: String,
    /// When it was last written (`last_modified`, list `updated_at`).
    modified: chrono::DateTime<chrono::Utc>,
    /// User metadata sent with its last write.
    user: Option<serde_json::Value>,
}

struct Upload {
    bucket: String,
    object: String,
    length: u64,
    offset: u64,
    upsert: bool,
    file: PathBuf,
    user: Option<serde_json::Value>,
}

struct Faults {
    cut_after: Mutex<Option<u64>>,
    corrupt: AtomicBool,
    fail_next: AtomicU32,
    /// Object uploads (POST/PUT `/object/...`) that get HTTP 503 next.
    fail_uploads: AtomicU32,
    /// PATCHes let through before the next one fails (-1: off).
    fail_patch_after: std::sync::atomic::AtomicI64,
    offline: AtomicBool,
    slow: Mutex<Option<Duration>>,
}

struct Inner {
    root: tempfile::TempDir,
    buckets: Vec<String>,
    objects: Mutex<HashMap<(String, String), Meta>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_id: AtomicU64,
    log: Mutex<Vec<Logged>>,
    faults: Faults,
}

/// A running stand-in; dropping it stops the server.
pub struct StorageStandIn {
    inner: Arc<Inner>,
    pub port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StorageStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StorageStandIn {
    /// Starts on 127.0.0.1 with these buckets (all private).
    pub async fn start(buckets: &[&str]) -> StorageStandIn {
        let inner = Arc::new(Inner {
            root: tempfile::tempdir().expect("temp dir"),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            objects: Mutex::default(),
            uploads: Mutex::default(),
            next_id: AtomicU64::new(1),
            log: Mutex::default(),
            faults: Faults {
                cut_after: Mutex::default(),
                corrupt: AtomicBool::new(false),
                fail_next: AtomicU32::new(0),
                fail_uploads: AtomicU32::new(0),
                fail_patch_after: std::sync::atomic::AtomicI64::new(-1),
                offline: AtomicBool::new(false),
                slow: Mutex::default(),
            },
        });
        for b in buckets {
            std::fs::create_dir_all(inner.root.path().join("objects").join(b)).unwrap();
        }
        std::fs::create_dir_all(inner.root.path().join("uploads")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StorageStandIn { inner, port, server }
    }

    /// `http://127.0.0.1:<port>/storage/v1`, for `[storage] url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/storage/v1", self.port)
    }

    fn object_file(&self, bucket: &str, object: &str) -> PathBuf {
        self.inner.root.path().join("objects").join(bucket).join(object)
    }

    /// Stores an object with these bytes.
    pub async fn put(&self, bucket: &str, object: &str, bytes: &[u8]) {
        let f = self.object_file(bucket, object);
        tokio::fs::create_dir_all(f.parent().unwrap()).await.unwrap();
        tokio::fs::write(&f, bytes).await.unwrap();
        let etag = hex(&Md5::digest(bytes));
        self.inner
            .objects
            .lock()
            .unwrap()
            .insert((bucket.into(), object.into()), Meta { size: bytes.len() as u64, etag, modified: chrono::Utc::now(), user: None });
    }

    /// Stores a large object without holding it: a sparse file of `size`
    /// bytes with its offset written every MiB (so a misplaced range changes
    /// the checksum). Returns its MD5.
    pub async fn put_large(&self, bucket: &str, object: &str, size: u64) -> String {
        let f = self.object_file(bucket, object);
        tokio::fs::create_dir_all(f.parent().unwrap()).await.unwrap();
        let mut file = tokio::fs::File::create(&f).await.unwrap();
        file.set_len(size).await.unwrap();
        let mut at = 0;
        while at + 8 <= size {
            file.seek(std::io::SeekFrom::Start(at)).await.unwrap();
            file.write_all(&at.to_le_bytes()).await.unwrap();
            at += 1 << 20;
        }
        file.sync_all().await.unwrap();
        drop(file);
        let etag = md5_of(&f).await;
        self.inner
            .objects
            .lock()
            .unwrap()
            .insert((bucket.into(), object.into()), Meta { size, etag: etag.clone(), modified: chrono::Utc::now(), user: None });
        etag
    }

    /// The object's bytes, None if absent.
    pub async fn get(&self, bucket: &str, object: &str) -> Option<Vec<u8>> {
        if !self.inner.objects.lock().unwrap().contains_key(&(bucket.to_string(), object.to_string())) {
            return None;
        }
        tokio::fs::read(self.object_file(bucket, object)).await.ok()
    }

    /// Every object of a bucket: path → MD5.
    pub fn objects(&self, bucket: &str) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .inner
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, _), _)| b == bucket)
            .map(|((_, p), m)| (p.clone(), m.etag.clone()))
            .collect();
        v.sort();
        v
    }

    /// Sets when the object was last written, as Storage reports it.
    pub fn set_modified(&self, bucket: &str, object: &str, at: chrono::DateTime<chrono::Utc>) {
        self.inner.objects.lock().unwrap().get_mut(&(bucket.to_string(), object.to_string())).expect("the object exists").modified = at;
    }

    /// The user metadata the object's last write carried.
    pub fn user_metadata(&self, bucket: &str, object: &str) -> Option<serde_json::Value> {
        self.inner.objects.lock().unwrap().get(&(bucket.to_string(), object.to_string())).and_then(|m| m.user.clone())
    }

    /// The next object download drops its connection after `n` body bytes.
    pub fn cut_next_download_after(&self, n: u64) {
        *self.inner.faults.cut_after.lock().unwrap() = Some(n);
    }
    /// The next object download has one byte flipped.
    pub fn corrupt_next_download(&self) {
        self.inner.faults.corrupt.store(true, Ordering::SeqCst);
    }
    /// The next `n` requests get HTTP 503.
    pub fn fail_next(&self, n: u32) {
        self.inner.faults.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next `n` plain object uploads get HTTP 503 (other requests pass).
    pub fn fail_next_uploads(&self, n: u32) {
        self.inner.faults.fail_uploads.store(n, Ordering::SeqCst);
    }
    /// After `n` more TUS PATCHes, one PATCH gets HTTP 503 (a cut upload).
    pub fn fail_patch_after(&self, n: i64) {
        self.inner.faults.fail_patch_after.store(n, Ordering::SeqCst);
    }
    /// Every request gets HTTP 503 while offline.
    pub fn set_offline(&self, offline: bool) {
        self.inner.faults.offline.store(offline, Ordering::SeqCst);
    }
    /// A pause after every 256 KiB served.
    pub fn set_slow(&self, pause: Option<Duration>) {
        *self.inner.faults.slow.lock().unwrap() = pause;
    }
    pub fn log(&self) -> Vec<Logged> {
        self.inner.log.lock().unwrap().clone()
    }
    pub fn clear_log(&self) {
        self.inner.log.lock().unwrap().clear();
    }
    /// Body bytes of `GET /object/...` downloads served so far.
    pub fn bytes_downloaded(&self) -> u64 {
        self.log().iter().filter(|l| l.method == "GET" && !l.path.contains("/info/")).map(|l| l.bytes.load(Ordering::SeqCst)).sum()
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn md5_of(path: &Path) -> String {
    let mut f = tokio::fs::File::open(path).await.unwrap();
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

fn error(http: u16, status: &str, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "statusCode": status, "error": error, "message": message });
    Response::builder().status(http).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

fn not_found() -> Response {
    error(400, "404", "not_found", "Object not found")
}

fn bucket_missing() -> Response {
    error(400, "404", "Bucket not found", "Bucket not found")
}

fn valid_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

async fn handle(State(st): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = percent_decode(req.uri().path());
    let headers = req.headers().clone();
    let range_start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse::<u64>().ok());
    let bytes = Arc::new(AtomicU64::new(0));
    st.log.lock().unwrap().push(Logged { method: method.to_string(), path: path.clone(), range_start, bytes: bytes.clone() });
    if st.faults.offline.load(Ordering::SeqCst)
        || st.faults.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    {
        return error(503, "503", "ServiceUnavailable", "Service Unavailable");
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
    match (apikey, auth) {
        (Some(k), Some(a)) if k == SERVICE_KEY && a == format!("Bearer {SERVICE_KEY}") => {}
        (_, None) => return error(400, "403", "Unauthorized", "headers must have required property 'authorization'"),
        _ => return error(400, "403", "Unauthorized", "new row violates row-level security policy"),
    }
    let Some(rest) = path.strip_prefix("/storage/v1/") else { return error(404, "404", "not_found", "Route not found") };
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    match (head, &method) {
        ("object", _) => {
            if let Some(t) = tail.strip_prefix("info/") {
                let (bucket, object) = t.split_once('/').unwrap_or((t, ""));
                return info(&st, bucket, object);
            }
            if let Some(bucket) = tail.strip_prefix("list/") {
                let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
                return list(&st, bucket, &body);
            }
            let (bucket, object) = tail.split_once('/').unwrap_or((tail, ""));
            if !st.buckets.iter().any(|b| b == bucket) {
                return bucket_missing();
            }
            if !valid_path(object) {
                return error(400, "400", "InvalidKey", &format!("Invalid key: {object}"));
            }
            match method {
                Method::GET => download(&st, bucket, object, range_start, bytes).await,
                Method::HEAD => head_object(&st, bucket, object),
                Method::POST | Method::PUT
                    if st.faults.fail_uploads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() =>
                {
                    let _ = axum::body::to_bytes(req.into_body(), 8 << 20).await;
                    error(503, "503", "ServiceUnavailable", "Service Unavailable")
                }
                Method::POST | Method::PUT => {
                    let upsert = method == Method::PUT || headers.get("x-upsert").is_some_and(|v| v == "true");
                    let user = headers.get("x-metadata").and_then(|v| v.to_str().ok()).and_then(|v| {
                        let json = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                        serde_json::from_slice::<serde_json::Value>(&json).ok().filter(|j| j.is_object())
                    });
                    upload(&st, bucket, object, upsert, user, req.into_body(), bytes).await
                }
                Method::DELETE => {
                    if st.objects.lock().unwrap().remove(&(bucket.to_string(), object.to_string())).is_none() {
                        return not_found();
                    }
                    let _ = tokio::fs::remove_file(st.root.path().join("objects").join(bucket).join(object)).await;
                    json(200, serde_json::json!({ "message": "Successfully deleted" }))
                }
                _ => error(405, "405", "MethodNotAllowed", "Method not allowed"),
            }
        }
        ("upload", _) if tail == "resumable" && method == Method::POST => tus_create(&st, &headers),
        ("upload", _) if tail.starts_with("resumable/") => {
            let id = tail.trim_start_matches("resumable/").to_string();
            match method {
                Method::HEAD => tus_head(&st, &id),
                Method::PATCH if st.faults.fail_patch_after.fetch_sub(1, Ordering::SeqCst) == 0 => {
                    // Read the chunk first, so the connection stays usable
                    // (an early answer makes the client drop it mid-request).
                    let _ = axum::body::to_bytes(req.into_body(), 8 << 20).await;
                    error(503, "503", "ServiceUnavailable", "Service Unavailable")
                }
                Method::PATCH => tus_patch(&st, &id, &headers, req.into_body(), bytes).await,
                _ => error(405, "405", "MethodNotAllowed", "Method not allowed"),
            }
        }
        _ => error(404, "404", "not_found", "Route not found"),
    }
}

fn percent_decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json(status: u16, v: serde_json::Value) -> Response {
    Response::builder().status(status).header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap()
}

fn info(st: &Inner, bucket: &str, object: &str) -> Response {
    if !st.buckets.iter().any(|b| b == bucket) {
        return bucket_missing();
    }
    match st.objects.lock().unwrap().get(&(bucket.to_string(), object.to_string())) {
        None => not_found(),
        Some(m) => json(
            200,
            serde_json::json!({ "name": object, "bucket_id": bucket, "size": m.size, "etag": format!("\"{}\"", m.etag),
                "content_type": "application/octet-stream", "version": m.etag, "metadata": m.user,
                "last_modified": m.modified.to_rfc3339(), "created_at": m.modified.to_rfc3339() }),
        ),
    }
}

/// `HEAD /object/{bucket}/{path}`: headers only, no user metadata.
fn head_object(st: &Inner, bucket: &str, object: &str) -> Response {
    match st.objects.lock().unwrap().get(&(bucket.to_string(), object.to_string())) {
        None => not_found(),
        Some(m) => Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, m.size)
            .header(header::ETAG, format!("\"{}\"", m.etag))
            .header(header::LAST_MODIFIED, m.modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .header(header::ACCEPT_RANGES, "bytes")
            .body(Body::empty())
            .unwrap(),
    }
}

fn list(st: &Inner, bucket: &str, body: &[u8]) -> Response {
    if !st.buckets.iter().any(|b| b == bucket) {
        return bucket_missing();
    }
    let q: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let prefix = q["prefix"].as_str().unwrap_or("").trim_matches('/').to_string();
    let limit = q["limit"].as_u64().unwrap_or(100) as usize;
    let offset = q["offset"].as_u64().unwrap_or(0) as usize;
    let mut entries: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for ((b, p), m) in st.objects.lock().unwrap().iter() {
        if b != bucket {
            continue;
        }
        let rest = if prefix.is_empty() {
            p.as_str()
        } else if let Some(r) = p.strip_prefix(&format!("{prefix}/")) {
            r
        } else {
            continue;
        };
        match rest.split_once('/') {
            Some((dir, _)) => {
                entries.insert(dir.to_string(), serde_json::json!({ "name": dir, "id": null, "metadata": null }));
            }
            None => {
                entries.insert(
                    rest.to_string(),
                    serde_json::json!({ "name": rest, "id": m.etag, "updated_at": m.modified.to_rfc3339(),
                        "metadata": { "size": m.size, "eTag": format!("\"{}\"", m.etag), "lastModified": m.modified.to_rfc3339() } }),
                );
            }
        }
    }
    json(200, serde_json::Value::Array(entries.into_values().skip(offset).take(limit).collect()))
}

async fn download(st: &Arc<Inner>, bucket: &str, object: &str, range_start: Option<u64>, served: Arc<AtomicU64>) -> Response {
    let Some(meta) = st.objects.lock().unwrap().get(&(bucket.to_string(), object.to_string())).cloned() else { return not_found() };
    let start = range_start.unwrap_or(0);
    if start > meta.size {
        return error(416, "416", "InvalidRange", "Range Not Satisfiable");
    }
    let mut file = tokio::fs::File::open(st.root.path().join("objects").join(bucket).join(object)).await.unwrap();
    file.seek(std::io::SeekFrom::Start(start)).await.unwrap();
    let cut = st.faults.cut_after.lock().unwrap().take();
    let corrupt = st.faults.corrupt.swap(false, Ordering::SeqCst);
    let slow = *st.faults.slow.lock().unwrap();
    let remaining = meta.size - start;
    let stream = futures_util::stream::unfold((file, 0u64, corrupt), move |(mut file, sent, corrupt)| {
        let served = served.clone();
        async move {
            if sent >= remaining {
                return None;
            }
            if let Some(c) = cut
                && sent >= c
            {
                return Some((Err(std::io::Error::other("connection cut by the stand-in")), (file, sent, corrupt)));
            }
            let mut n = PIECE.min((remaining - sent) as usize);
            if let Some(c) = cut {
                n = n.min((c - sent) as usize).max(1);
            }
            let mut buf = vec![0u8; n];
            if file.read_exact(&mut buf).await.is_err() {
                return None;
            }
            if corrupt {
                buf[n / 2] ^= 0xff;
            }
            if let Some(p) = slow {
                tokio::time::sleep(p).await;
            }
            served.fetch_add(n as u64, Ordering::SeqCst);
            Some((Ok(bytes::Bytes::from(buf)), (file, sent + n as u64, false)))
        }
    });
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, remaining)
        .header(header::ETAG, format!("\"{}\"", meta.etag))
        .header(header::ACCEPT_RANGES, "bytes");
    if range_start.is_some() {
        b = b
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", meta.size.saturating_sub(1), meta.size));
    }
    b.body(Body::from_stream(stream)).unwrap()
}

/// Streams a request body into `file`; false if it was cut.
async fn receive(body: Body, file: &Path, received: &AtomicU64) -> bool {
    let mut out = tokio::fs::File::create(file).await.unwrap();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return false };
        out.write_all(&chunk).await.unwrap();
        received.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    out.sync_all().await.unwrap();
    true
}

async fn upload(
    st: &Arc<Inner>,
    bucket: &str,
    object: &str,
    upsert: bool,
    user: Option<serde_json::Value>,
    body: Body,
    received: Arc<AtomicU64>,
) -> Response {
    let key = (bucket.to_string(), object.to_string());
    if !upsert && st.objects.lock().unwrap().contains_key(&key) {
        return error(400, "409", "Duplicate", "The resource already exists");
    }
    let tmp = st.root.path().join("uploads").join(format!("plain-{}", st.next_id.fetch_add(1, Ordering::SeqCst)));
    if !receive(body, &tmp, &received).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return error(400, "400", "IncompleteBody", "the request body was cut");
    }
    commit(st, bucket, object, &tmp, user).await;
    json(200, serde_json::json!({ "Key": format!("{bucket}/{object}") }))
}

/// Makes a received file the object, with this user metadata.
async fn commit(st: &Inner, bucket: &str, object: &str, tmp: &Path, user: Option<serde_json::Value>) {
    let dest = st.root.path().join("objects").join(bucket).join(object);
    tokio::fs::create_dir_all(dest.parent().unwrap()).await.unwrap();
    let size = tokio::fs::metadata(tmp).await.unwrap().len();
    let etag = md5_of(tmp).await;
    tokio::fs::rename(tmp, &dest).await.unwrap();
    st.objects.lock().unwrap().insert((bucket.to_string(), object.to_string()), Meta { size, etag, modified: chrono::Utc::now(), user });
}

fn tus_create(st: &Inner, headers: &HeaderMap) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    if h("tus-resumable").as_deref() != Some("1.0.0") {
        return error(412, "412", "PreconditionFailed", "Unsupported TUS version");
    }
    let Some(length) = h("upload-length").and_then(|v| v.parse::<u64>().ok()) else {
        return error(400, "400", "InvalidRequest", "Upload-Length is required");
    };
    let mut meta = HashMap::new();
    for pair in h("upload-metadata").unwrap_or_default().split(',') {
        if let Some((k, v)) = pair.trim().split_once(' ') {
            let v = base64::engine::general_purpose::STANDARD.decode(v).unwrap_or_default();
            meta.insert(k.to_string(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    let (Some(bucket), Some(object)) = (meta.get("bucketName"), meta.get("objectName")) else {
        return error(400, "400", "InvalidRequest", "Upload-Metadata needs bucketName and objectName");
    };
    if !st.buckets.contains(bucket) {
        return bucket_missing();
    }
    let upsert = h("x-upsert").as_deref() == Some("true");
    if !upsert && st.objects.lock().unwrap().contains_key(&(bucket.clone(), object.clone())) {
        return error(409, "409", "Duplicate", "The resource already exists");
    }
    let user = meta.get("metadata").and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()).filter(|j| j.is_object());
    let id = format!("u{}", st.next_id.fetch_add(1, Ordering::SeqCst));
    let file = st.root.path().join("uploads").join(&id);
    std::fs::File::create(&file).unwrap();
    st.uploads
        .lock()
        .unwrap()
        .insert(id.clone(), Upload { bucket: bucket.clone(), object: object.clone(), length, offset: 0, upsert, file, user });
    Response::builder()
        .status(201)
        .header(header::LOCATION, format!("/storage/v1/upload/resumable/{id}"))
        .header("Tus-Resumable", "1.0.0")
        .body(Body::empty())
        .unwrap()
}

fn tus_head(st: &Inner, id: &str) -> Response {
    match st.uploads.lock().unwrap().get(id) {
        None => error(404, "404", "not_found", "Upload not found"),
        Some(u) => Response::builder()
            .status(200)
            .header("Upload-Offset", u.offset)
            .header("Upload-Length", u.length)
            .header("Tus-Resumable", "1.0.0")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::empty())
            .unwrap(),
    }
}

async fn tus_patch(st: &Arc<Inner>, id: &str, headers: &HeaderMap, body: Body, received: Arc<AtomicU64>) -> Response {
    let offset: Option<u64> = headers.get("upload-offset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let (expected, length) = match st.uploads.lock().unwrap().get(id) {
        None => return error(404, "404", "not_found", "Upload not found"),
        Some(u) => (u.offset, u.length),
    };
    if offset != Some(expected) {
        return error(409, "409", "Conflict", "Upload-Offset does not match the upload's offset");
    }
    let chunk = st.root.path().join("uploads").join(format!("{id}.chunk"));
    if !receive(body, &chunk, &received).await {
        let _ = tokio::fs::remove_file(&chunk).await;
        return error(400, "400", "IncompleteBody", "the chunk was cut");
    }
    let n = tokio::fs::metadata(&chunk).await.unwrap().len();
    if expected + n > length || (expected + n < length && n != TUS_CHUNK) {
        let _ = tokio::fs::remove_file(&chunk).await;
        return error(400, "400", "InvalidChunkSize", "every chunk but the last must be exactly 6 MiB");
    }
    let (file, done) = {
        let mut ups = st.uploads.lock().unwrap();
        let u = ups.get_mut(id).unwrap();
        u.offset += n;
        (u.file.clone(), u.offset == u.length)
    };
    let mut out = tokio::fs::OpenOptions::new().append(true).open(&file).await.unwrap();
    let mut inp = tokio::fs::File::open(&chunk).await.unwrap();
    tokio::io::copy(&mut inp, &mut out).await.unwrap();
    out.sync_all().await.unwrap();
    let _ = tokio::fs::remove_file(&chunk).await;
    if done {
        let u = st.uploads.lock().unwrap().remove(id).unwrap();
        if !u.upsert && st.objects.lock().unwrap().contains_key(&(u.bucket.clone(), u.object.clone())) {
            return error(409, "409", "Duplicate", "The resource already exists");
        }
        commit(st, &u.bucket, &u.object, &u.file, u.user).await;
    }
    Response::builder().status(204).header("Upload-Offset", expected + n).header("Tus-Resumable", "1.0.0").body(Body::empty()).unwrap()
}

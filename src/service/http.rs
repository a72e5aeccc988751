//! The optional HTTP listener (`[http] listen`, off by default; bind it to
//! 127.0.0.1, or set `[http] token` to listen beyond it, see [`access`]):
//! `GET /` (the status page for people, [`crate::page`]) and `GET
//! /api/page` (its live part, which the page polls), `GET /health` (200 or
//! 503), `GET /status` (the `status --json` document plus live
//! connectivity and alerts), `GET /metrics` (Prometheus text format) and
//! `POST /sync` (poll and push now, the only request that changes
//! anything).
//!
//! Nothing here runs unless a request comes: the page is computed per
//! request, and the conflicts it shows are read from upstream in the
//! background at most once a minute, only while someone is looking. The
//! page's local connection is kept while the page polls and closed a
//! minute after the last request.
//!
//! Health is 503 when the service cannot do its job without a person: the
//! local database is unreachable, the slot is lost or missing, or an
//! operator alert (such as a rejected key) is raised. Upstream merely being
//! offline is normal in a clinic and keeps 200 (`upstream_online: false`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::json;
use tokio::sync::watch;

use super::access;
use super::runtime::Runtime;
use crate::config::LocalDbs;
use crate::error::LOCAL;
use crate::page::{self, AlertView, ConflictLine, ConflictsView, PageInput};
use crate::status;
use crate::store::{JournalStore, Store};
use crate::upstream::{self, ConflictQuery, Upstream};

/// How long the conflicts read from upstream are shown before they are
/// read again (while someone looks).
const CONFLICTS_FRESH: Duration = Duration::from_secs(60);
/// Conflicts listed on the page.
const CONFLICTS_LISTED: i64 = 5;
/// The page's local connection is closed after this long without a
/// request (opening one per refresh would cost more than the page).
const PAGE_CONNECTION_IDLE: Duration = Duration::from_secs(60);

/// What the handlers share: the runtime, and what the page reads from
/// upstream (its own lazily opened client; the sync tasks' are busy).
pub(crate) struct HttpState {
    pub rt: Arc<Runtime>,
    upstream: Option<upstream::Client>,
    conflicts: Mutex<Option<ConflictsView>>,
    refreshing: AtomicBool,
    /// The page's local connection while someone looks, and when it was
    /// last used.
    page_conn: Mutex<Option<(Arc<LocalDbs>, std::time::Instant)>>,
}

/// The http task: serves while the service runs, when `[http] listen` is set.
pub(crate) async fn task(rt: Arc<Runtime>, stop: watch::Receiver<bool>) {
    if let Some(addr) = rt.cfg.http.listen
        && let Err(e) = serve(addr, rt.clone(), stop).await
    {
        tracing::error!(error = %e, "http listener failed");
    }
}

async fn serve(addr: SocketAddr, rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
    if !addr.ip().is_loopback() && rt.cfg.http.token.is_empty() {
        // Config validation refuses this already; never bind it anyway.
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to listen on {addr} without [http] token (only loopback may go without)"),
        ));
    }
    let state = Arc::new(HttpState {
        upstream: upstream::Client::from_config(&rt.cfg).ok(),
        rt,
        conflicts: Mutex::new(None),
        refreshing: AtomicBool::new(false),
        page_conn: Mutex::new(None),
    });
    let app = Router::new()
        .route("/", get(page_html))
        .route("/api/page", get(page_json))
        .route("/health", get(health))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/sync", post(sync_now))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::require_token))
        .route("/login", get(access::login_form).post(access::login))
        .route("/assets/page.css", get(|| async { asset("text/css; charset=utf-8", page::CSS) }))
        .route("/assets/page.js", get(|| async { asset("text/javascript; charset=utf-8", page::JS) }))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "http listener ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn snapshot(rt: &Runtime) -> Result<status::Status, Response> {
    let dbs = LocalDbs::connect(&rt.cfg).await.map_err(|e| unavailable(&e.to_string()))?;
    status::gather(&rt.cfg, &dbs).await.map_err(|e| unavailable(&e.to_string()))
}

fn unavailable(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "unavailable", "reasons": [reason] }))).into_response()
}

async fn health(State(st): State<Arc<HttpState>>) -> Response {
    let rt = &st.rt;
    let st = match snapshot(rt).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut reasons = Vec::new();
    match &st.slot {
        None => reasons.push("replication slot missing".to_string()),
        Some(s) if s.wal_status.as_deref() == Some("lost") => reasons.push("replication slot invalidated".into()),
        _ => {}
    }
    for (k, _) in rt.alerter.active() {
        if k == "upstream_rejected" || k.ends_with("_failing") {
            reasons.push(format!("alert {k}"));
        }
    }
    let up = rt.upstream_link.state();
    let body = json!({
        "status": if reasons.is_empty() { "ok" } else { "failing" },
        "reasons": reasons,
        "upstream_online": up.online,
        "upstream_since": up.since_wall.to_rfc3339(),
        "backlog": st.backlog,
    });
    let code = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn status_json(State(st): State<Arc<HttpState>>) -> Response {
    let rt = &st.rt;
    let mut s = match snapshot(rt).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let up = rt.upstream_link.state();
    s.upstream = Some(status::LinkStatus { online: up.online, since: Some(up.since_wall.to_rfc3339()) });
    s.alerts = rt.alerter.active().into_iter().map(|(k, since)| format!("{k} (since {})", since.to_rfc3339())).collect();
    axum::Json(s).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let rt = &state.rt;
    let st = match snapshot(rt).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match render_metrics(rt, &st) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn render_metrics(rt: &Runtime, st: &status::Status) -> prometheus::Result<String> {
    let reg = Registry::new_custom(Some("centrovision_sync".into()), None)?;
    let gauge = |name: &str, help: &str, v: i64| -> prometheus::Result<()> {
        let g = IntGauge::new(name, help)?;
        g.set(v);
        reg.register(Box::new(g))
    };
    gauge("journal_backlog_rows", "Journal rows waiting to be pushed upstream", st.backlog)?;
    gauge("journal_parked_rows", "Journal rows parked with an error", st.parked)?;
    gauge("down_parked_rows", "Upstream rows the local tables rejected, parked and retried", st.parked_down)?;
    gauge("journal_oldest_pending_seconds", "Age of the oldest unsynced change", st.oldest_pending_seconds.unwrap_or(0.0) as i64)?;
    let slot = st.slot.as_ref();
    gauge(
        "slot_lag_bytes",
        "WAL between the current position and the slot's confirmed position",
        slot.and_then(|s| s.lag_bytes).unwrap_or(0),
    )?;
    gauge("slot_retained_bytes", "WAL the slot keeps on disk", slot.and_then(|s| s.retained_bytes).unwrap_or(0))?;
    gauge(
        "slot_healthy",
        "1 when the slot exists and is not lost",
        i64::from(slot.is_some_and(|s| s.wal_status.as_deref() != Some("lost"))),
    )?;
    gauge("upstream_online", "1 when upstream answered the last check", i64::from(rt.upstream_link.is_online()))?;
    gauge("alerts_active", "Alerts currently raised", rt.alerter.active().len() as i64)?;
    let pending = IntGaugeVec::new(Opts::new("table_pending_rows", "Unsynced journal rows per table"), &["table"])?;
    for t in &st.tables {
        pending.with_label_values(&[&t.table]).set(t.pending);
    }
    reg.register(Box::new(pending))?;
    let pushed = IntCounter::new("rows_pushed_total", "Journal rows delivered upstream by this process")?;
    pushed.inc_by(rt.pushed_total.load(Ordering::Relaxed));
    reg.register(Box::new(pushed))?;
    let pulled = IntCounter::new("rows_pulled_total", "Upstream rows applied locally by this process")?;
    pulled.inc_by(rt.pulled_total.load(Ordering::Relaxed));
    reg.register(Box::new(pulled))?;
    render_file_metrics(&reg, rt)?;
    let mut buf = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The study-files task's figures (`[storage]`; zeros without it).
fn render_file_metrics(reg: &Registry, rt: &Runtime) -> prometheus::Result<()> {
    let f = &rt.files;
    for (name, help, v) in [
        ("files_downloaded_total", "Study files downloaded into the mirror by this process", &f.downloaded),
        ("files_uploaded_total", "Study files uploaded from the mirror by this process", &f.uploaded),
        ("files_conflicts_total", "Study files changed on both sides (the loser kept beside)", &f.conflicts),
        ("files_bytes_total", "Study file bytes moved either way by this process", &f.bytes),
    ] {
        let c = IntCounter::new(name, help)?;
        c.inc_by(v.load(Ordering::Relaxed));
        reg.register(Box::new(c))?;
    }
    for (name, help, v) in [
        ("files_pending", "Study files waiting to move", &f.pending),
        ("files_pending_bytes", "Bytes of the study files waiting to move", &f.pending_bytes),
        ("files_oldest_waiting_seconds", "How long the oldest waiting study file has waited", &f.oldest_waiting_seconds),
    ] {
        let g = IntGauge::new(name, help)?;
        g.set(v.load(Ordering::Relaxed));
        reg.register(Box::new(g))?;
    }
    Ok(())
}

async fn sync_now(State(st): State<Arc<HttpState>>) -> impl IntoResponse {
    st.rt.sync_now.notify_waiters();
    st.rt.journaled.notify_one();
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "sync requested" })))
}

/// Headers on every answer: nothing cached, and a content policy that lets
/// the page load nothing but its own assets and talk to nobody but this
/// listener (the clinic may be offline; the page must not try elsewhere).
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /`: the whole page.
async fn page_html(State(st): State<Arc<HttpState>>) -> Response {
    let data = page_data(&st).await;
    Html(page::full_page(st.rt.cfg.http.language, &data)).into_response()
}

/// `GET /api/page`: the verdict and the live part of the page, as JSON.
async fn page_json(State(st): State<Arc<HttpState>>) -> Response {
    axum::Json(page_data(&st).await).into_response()
}

/// Reads everything the page shows (three queries on one local
/// connection, pipelined) and renders it.
pub(crate) async fn page_data(st: &Arc<HttpState>) -> page::PageData {
    let rt = &st.rt;
    let up = rt.upstream_link.state();
    let alerts: Vec<AlertView> =
        rt.alerter.active_with_summary().into_iter().map(|(key, since, summary)| AlertView { key, since, summary }).collect();
    refresh_conflicts(st, up.online);
    let conflicts = st.conflicts.lock().expect("not poisoned").clone();
    let local = page_connection(st).await;
    let (status, history, parked) = match &local {
        Ok(c) => {
            let dbs: &LocalDbs = c;
            let store = Store::new(&dbs.local, LOCAL);
            let jstore = JournalStore::new(&dbs.journal, crate::error::JOURNAL);
            let (s, h, p) = tokio::join!(
                status::gather(&rt.cfg, dbs),
                store.hourly_history(page::HISTORY_HOURS),
                jstore.parked_rows(page::PARKED_LISTED)
            );
            (s.map_err(|e| e.to_string()), h.unwrap_or_default(), p.unwrap_or_default())
        }
        Err(e) => (Err(e.to_string()), Vec::new(), Vec::new()),
    };
    let input = PageInput {
        lang: rt.cfg.http.language,
        now: chrono::Utc::now(),
        status: status.as_ref().map_err(|e| e.clone()),
        upstream_online: up.online,
        upstream_since: up.since_wall,
        alerts: &alerts,
        history: &history,
        parked: &parked,
        conflicts: conflicts.as_ref(),
    };
    page::render(&input)
}

/// The page's local connection: reused while the page keeps polling,
/// closed by a watcher after [`PAGE_CONNECTION_IDLE`] without a request.
async fn page_connection(st: &Arc<HttpState>) -> crate::error::Result<Arc<LocalDbs>> {
    {
        let mut slot = st.page_conn.lock().expect("not poisoned");
        if let Some((c, used)) = slot.as_mut()
            && !c.is_closed()
        {
            *used = std::time::Instant::now();
            return Ok(c.clone());
        }
    }
    let c = Arc::new(LocalDbs::connect(&st.rt.cfg).await?);
    *st.page_conn.lock().expect("not poisoned") = Some((c.clone(), std::time::Instant::now()));
    let watch = st.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PAGE_CONNECTION_IDLE / 2).await;
            let mut slot = watch.page_conn.lock().expect("not poisoned");
            match slot.as_ref() {
                Some((c, used)) if !c.is_closed() && used.elapsed() < PAGE_CONNECTION_IDLE => {}
                _ => {
                    *slot = None;
                    break;
                }
            }
        }
    });
    Ok(c)
}

/// Starts reading the conflicts from upstream in the background when the
/// last reading is older than [`CONFLICTS_FRESH`] (and none is under way).
fn refresh_conflicts(st: &Arc<HttpState>, online: bool) {
    let stale =
        st.conflicts.lock().expect("not poisoned").as_ref().is_none_or(|c| {
            (chrono::Utc::now() - c.read_at).to_std().unwrap_or_default() > CONFLICTS_FRESH || (online && c.total.is_err())
        });
    if !stale || st.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    let st = st.clone();
    tokio::spawn(async move {
        let view = read_conflicts(&st).await;
        *st.conflicts.lock().expect("not poisoned") = Some(view);
        st.refreshing.store(false, Ordering::Release);
    });
}

async fn read_conflicts(st: &HttpState) -> ConflictsView {
    let read_at = chrono::Utc::now();
    let Some(up) = &st.upstream else {
        return ConflictsView { read_at, total: Err("upstream is not configured".into()), latest: vec![] };
    };
    let cfg = &st.rt.cfg;
    let q = ConflictQuery { schema: &cfg.supabase.schema, tables: None, since: None, limit: CONFLICTS_LISTED };
    let read = async { tokio::join!(up.conflict_count(None), up.conflicts(&q)) };
    let (total, list) = match tokio::time::timeout(Duration::from_secs(15), read).await {
        Ok(r) => r,
        Err(_) => return ConflictsView { read_at, total: Err("upstream did not answer in time".into()), latest: vec![] },
    };
    let side = |v: &serde_json::Value| {
        let what = if v["deleted"].as_bool() == Some(true) { "delete" } else { "edit" };
        format!("{what} {}", v["writer"].as_str().unwrap_or("?"))
    };
    let latest = list
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .unwrap_or_default()
        .iter()
        .map(|c| ConflictLine {
            decided_at: c["decided_at"].as_str().unwrap_or("").to_string(),
            table: c["table"].as_str().unwrap_or("").to_string(),
            key: c["key"].as_str().unwrap_or("").to_string(),
            kept: side(&c["winner"]),
            lost: side(&c["loser"]),
            rule: c["rule"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    ConflictsView { read_at, total: total.map_err(|e| e.to_string()), latest }
}

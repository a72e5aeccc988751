//! The optional HTTP listener (`[http] listen`, off by default; bind it to
//! 127.0.0.1): `GET /health` (200 or 503), `GET /status` (the `status
//! --json` document plus live connectivity and alerts), `GET /metrics`
//! (Prometheus text format) and `POST /sync` (poll and push now).
//!
//! Health is 503 when the service cannot do its job without a person: the
//! local database is unreachable, the slot is lost or missing, or an
//! operator alert (such as a rejected key) is raised. Upstream merely being
//! offline is normal in a clinic and keeps 200 (`upstream_online: false`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::json;
use tokio::sync::watch;

use super::runtime::Runtime;
use crate::config::connect_local;
use crate::status;

/// The http task: serves while the service runs, when `[http] listen` is set.
pub(crate) async fn task(rt: Arc<Runtime>, stop: watch::Receiver<bool>) {
    if let Some(addr) = rt.cfg.http.listen
        && let Err(e) = serve(addr, rt.clone(), stop).await
    {
        tracing::error!(error = %e, "http listener failed");
    }
}

async fn serve(addr: SocketAddr, rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/sync", post(sync_now))
        .with_state(rt);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "http listener ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn snapshot(rt: &Runtime) -> Result<status::Status, Response> {
    let local = connect_local(&rt.cfg).await.map_err(|e| unavailable(&e.to_string()))?;
    status::gather(&rt.cfg, &local).await.map_err(|e| unavailable(&e.to_string()))
}

fn unavailable(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "unavailable", "reasons": [reason] }))).into_response()
}

async fn health(State(rt): State<Arc<Runtime>>) -> Response {
    let st = match snapshot(&rt).await {
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

async fn status_json(State(rt): State<Arc<Runtime>>) -> Response {
    let mut st = match snapshot(&rt).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let up = rt.upstream_link.state();
    st.upstream = Some(status::LinkStatus { online: up.online, since: Some(up.since_wall.to_rfc3339()) });
    st.alerts = rt.alerter.active().into_iter().map(|(k, since)| format!("{k} (since {})", since.to_rfc3339())).collect();
    axum::Json(st).into_response()
}

async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    let st = match snapshot(&rt).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match render_metrics(&rt, &st) {
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
    let mut buf = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn sync_now(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    rt.sync_now.notify_waiters();
    rt.journaled.notify_one();
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "sync requested" })))
}

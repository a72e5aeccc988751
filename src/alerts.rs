//! Alerts: raised once when a condition starts, resolved when it ends.
//!
//! An alert is an ERROR log line plus, when `[alerts] webhook_url` is set, a
//! JSON POST (`service`, `alert`, `summary`, `since`, `details`, `resolved`)
//! to the webhook. Conditions: a task failing `consecutive_errors` times in a
//! row, the journal backlog or its oldest change over their limits, the
//! slot retaining too much WAL, and the slot lost or missing (with the
//! recovery steps). The webhook URL may hold a token: it is never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::Config;
use crate::error::SyncError;

pub struct Alerter {
    webhook: Option<String>,
    http: reqwest::Client,
    /// Raised alerts: since when, and the summary (for the status page).
    active: Mutex<HashMap<String, (DateTime<Utc>, String)>>,
    threshold: u32,
}

impl Alerter {
    pub fn new(cfg: &Config) -> Self {
        let webhook = (!cfg.alerts.webhook_url.is_empty()).then(|| cfg.alerts.webhook_url.expose().to_string());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_else(|_| reqwest::Client::new());
        Alerter { webhook, http, active: Mutex::new(HashMap::new()), threshold: cfg.alerts.consecutive_errors }
    }

    /// The alerts currently raised, with when each started.
    pub fn active(&self) -> Vec<(String, DateTime<Utc>)> {
        let mut v: Vec<_> = self.active.lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.0)).collect();
        v.sort();
        v
    }

    /// The alerts currently raised, with when each started and its summary
    /// (which names the fix where there is one).
    pub fn active_with_summary(&self) -> Vec<(String, DateTime<Utc>, String)> {
        let mut v: Vec<_> = self.active.lock().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.0, v.1.clone())).collect();
        v.sort();
        v
    }

    /// Raises `key` unless it is already raised.
    pub async fn raise(&self, key: &str, summary: &str, details: serde_json::Value) {
        let since = {
            let mut a = self.active.lock().expect("not poisoned");
            if a.contains_key(key) {
                return;
            }
            let now = Utc::now();
            a.insert(key.to_string(), (now, summary.to_string()));
            now
        };
        tracing::error!(alert = key, since = %since.to_rfc3339(), details = %details, "ALERT: {summary}");
        self.post(json!({
            "service": "centrovision-sync",
            "alert": key,
            "summary": summary,
            "since": since.to_rfc3339(),
            "details": details,
            "resolved": false,
        }))
        .await;
    }

    /// Resolves `key` if it was raised.
    pub async fn resolve(&self, key: &str) {
        let since = self.active.lock().expect("not poisoned").remove(key).map(|(since, _)| since);
        if let Some(since) = since {
            tracing::info!(alert = key, since = %since.to_rfc3339(), "alert resolved");
            self.post(json!({
                "service": "centrovision-sync",
                "alert": key,
                "summary": format!("{key} resolved"),
                "since": since.to_rfc3339(),
                "details": {},
                "resolved": true,
            }))
            .await;
        }
    }

    async fn post(&self, body: serde_json::Value) {
        let Some(url) = &self.webhook else { return };
        match self.http.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = r.status().as_u16(), "alert webhook answered with an error"),
            Err(e) => tracing::warn!(error = %e.without_url(), "alert webhook could not be reached"),
        }
    }

    /// A tracker of one task's consecutive failures.
    pub fn streak(&self, task: &'static str) -> Streak<'_> {
        Streak { alerter: self, task, failures: AtomicU32::new(0) }
    }
}

/// Consecutive failures of one task; alerts at the configured count.
pub struct Streak<'a> {
    alerter: &'a Alerter,
    task: &'static str,
    failures: AtomicU32,
}

impl Streak<'_> {
    pub async fn failed(&self, e: &SyncError) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.alerter.threshold {
            self.alerter
                .raise(
                    &format!("{}_failing", self.task),
                    &format!("{} failed {n} times in a row: {e}", self.task),
                    json!({ "task": self.task, "consecutive_errors": n, "error": e.to_string(), "class": format!("{:?}", e.class()) }),
                )
                .await;
        }
    }
    pub async fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            self.alerter.resolve(&format!("{}_failing", self.task)).await;
        }
    }
}

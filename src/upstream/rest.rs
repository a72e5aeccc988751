//! Supabase's HTTP API (PostgREST) as the upstream (`mode = "rest"`).
//!
//! The clinic server only has the project URL and the service-role key.
//! Pull is a plain `GET /rest/v1/<table>` with PostgREST filters for the
//! keyset page; push calls the same SQL function the postgres mode calls, via
//! `POST /rest/v1/rpc/centrovision_sync_apply`, so both modes share one
//! last-write-wins implementation. Certificate verification stays on (rustls);
//! plain `http://` is accepted only for loopback addresses (checked when the
//! config is loaded).
//!
//! Reads are correct whatever the project's "Max rows" (`db-max-rows`, which
//! cuts every GET silently): `fetch` asks with `Prefer: count=exact`, and
//! when the answer holds fewer rows than matched it learns the cap from it
//! and asks again in chunks of at most that many keys; `pull` continues a
//! short page from its last row until the page is full or nothing follows.
//! Every RPC the client calls returns one JSON value (never a set), which
//! the cap does not cut.
//!
//! Every non-success answer goes through [`classify`], the one place that
//! decides retry (408, 429, 5xx, timeouts, resets — honouring
//! `Retry-After`), too large or too slow as sent (413, a statement timeout
//! 57014, a program limit 54xxx: the pusher splits the batch), operator
//! (401/403 keys, 404 missing table or function) or data (400/409 with a
//! PostgreSQL code). PostgREST's JSON error body
//! (`code`, `message`, `details`, `hint`) is carried into the message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ConflictQuery, FeedRequest, HashRequest, Outcome, TableRef, Upstream, parse_outcome};
use crate::config::{Config, Secret};
use crate::error::{Cause, ErrorKind, Result, Side, SyncError, kind_of_sqlstate};

pub struct RestUpstream {
    http: reqwest::Client,
    base: Url,
    schema: String,
    /// This clinic's writer id ([sync] clinic_id).
    writer: String,
    /// The most rows a GET returned while more matched: the project's max
    /// rows as learned from a capped answer (0 while none was seen).
    row_cap: AtomicUsize,
}

/// One answer to a table read: its rows, and the total that matched when
/// the server counted them (`Content-Range: 0-299/1000`).
struct Rows {
    rows: Vec<Box<RawValue>>,
    total: Option<usize>,
}

/// PostgREST's error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    details: Option<serde_json::Value>,
    hint: Option<serde_json::Value>,
}

impl RestUpstream {
    pub fn new(cfg: &Config) -> Result<Self> {
        let url =
            cfg.supabase.url.as_deref().ok_or_else(|| SyncError::new(ErrorKind::Config, "[supabase] url is required in REST mode"))?;
        let mut base = Url::parse(url).map_err(|e| SyncError::new(ErrorKind::Config, format!("[supabase] url is not a valid URL: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let base = base.join("rest/v1/").map_err(|e| SyncError::new(ErrorKind::Config, format!("[supabase] url: {e}")))?;
        let http = reqwest::Client::builder()
            .default_headers(auth_headers(&cfg.supabase.service_key)?)
            .connect_timeout(cfg.supabase.connect_timeout)
            .timeout(cfg.supabase.request_timeout)
            .gzip(true)
            .user_agent(concat!("centrovision-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SyncError::new(ErrorKind::Config, format!("cannot build the HTTP client: {e}")))?;
        Ok(RestUpstream {
            http,
            base,
            schema: cfg.supabase.schema.clone(),
            writer: cfg.sync.clinic_id.clone(),
            row_cap: AtomicUsize::new(0),
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.path_segments_mut().expect("http(s) URL").pop_if_empty().push(path);
        u
    }

    fn rpc_url(&self, function: &str) -> Url {
        let mut u = self.base.clone();
        u.path_segments_mut().expect("http(s) URL").pop_if_empty().push("rpc").push(function);
        u
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<String> {
        self.send_ranged(what, req).await.map(|(body, _)| body)
    }

    /// [`send`](Self::send), also returning the `Content-Range` header.
    async fn send_ranged(&self, what: &str, req: reqwest::RequestBuilder) -> Result<(String, Option<String>)> {
        let req =
            if self.schema != "public" { req.header("Accept-Profile", &self.schema).header("Content-Profile", &self.schema) } else { req };
        let resp = req.send().await.map_err(|e| rest_transport_error(what, &e))?;
        let status = resp.status();
        let range = resp.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.map_err(|e| rest_transport_error(what, &e))?;
        if status.is_success() {
            return Ok((body, range));
        }
        let mut err = classify(what, status, &body);
        err.retry_after = retry_after;
        Err(err)
    }

    /// One GET of `table`; with `counted`, the server also counts every
    /// matching row (`Prefer: count=exact`), whatever it returns.
    async fn get_rows(&self, what: &str, table: &TableRef<'_>, query: &[(String, String)], counted: bool) -> Result<Rows> {
        let mut url = self.url(table.name);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("select", &select_list(table));
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        let mut req = self.http.get(url).header("Accept", "application/json");
        if counted {
            req = req.header("Prefer", "count=exact");
        }
        let (body, range) = self.send_ranged(what, req).await?;
        let body = check_json_array(what, body)?;
        let rows: Vec<Box<RawValue>> = serde_json::from_str(&body)
            .map_err(|e| SyncError::new(ErrorKind::Contract, format!("{what}: upstream answered an unexpected JSON array ({e})")))?;
        Ok(Rows { rows, total: range.as_deref().and_then(range_total) })
    }

    /// Lowers the learned row cap to `n` (never raises it: a cap that was
    /// there may come back).
    fn learn_cap(&self, n: usize) {
        // Logged when learnt (or lowered), not on every capped read.
        if self.row_cap.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c == 0 || n < c).then_some(n)).is_ok() {
            tracing::info!(rows = n, "upstream returns at most this many rows per read (the project's max rows); reading in chunks of it");
        }
    }

    async fn rpc(&self, function: &str, body: String) -> Result<String> {
        let req = self
            .http
            .post(self.rpc_url(function))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body);
        self.send(&format!("calling {function} upstream"), req).await
    }
}

/// Headers that authenticate every request. Legacy service-role keys are
/// JWTs and go in `apikey` and `Authorization: Bearer`; the newer
/// `sb_secret_…` keys (anything not shaped like a JWT) in `apikey` only —
/// the gateway rejects them as a Bearer token.
fn auth_headers(key: &Secret) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    let mut v = HeaderValue::from_str(key.expose())
        .map_err(|_| SyncError::new(ErrorKind::Config, "[supabase] service_key contains characters that cannot be sent in a header"))?;
    v.set_sensitive(true);
    h.insert("apikey", v);
    if looks_like_jwt(key.expose()) {
        let mut b = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| SyncError::new(ErrorKind::Config, "[supabase] service_key contains invalid characters"))?;
        b.set_sensitive(true);
        h.insert(reqwest::header::AUTHORIZATION, b);
    }
    Ok(h)
}

fn looks_like_jwt(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// The `select` of a read of `table`: every column (`*`), except that
/// arrays of json/jsonb are cast to text (see [`TableRef::json_arrays`]),
/// which needs the columns named. PostgREST cannot name a column whose name
/// holds `"`: such a table is read with `*`.
fn select_list(table: &TableRef<'_>) -> String {
    if table.json_arrays().next().is_none() || table.columns.iter().any(|c| c.name.contains('"')) {
        return "*".to_string();
    }
    let named: Vec<String> =
        table.columns.iter().map(|c| if c.is_json_array() { format!("\"{}\"::text", c.name) } else { format!("\"{}\"", c.name) }).collect();
    named.join(",")
}

/// Quotes a column name for PostgREST when it is not a plain identifier.
fn column(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\\\""))
    }
}

/// The total of `Content-Range: 0-299/1000` (or `*/0`); None for `*`.
fn range_total(range: &str) -> Option<usize> {
    range.rsplit_once('/').and_then(|(_, total)| total.trim().parse().ok())
}

fn json_array(rows: &[Box<RawValue>]) -> String {
    serde_json::to_string(rows).expect("raw JSON serializes")
}

/// `in.("a","b")`: every key quoted, `\` and `"` escaped.
fn in_list(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("in.({})", quoted.join(","))
}

fn check_json_array(what: &str, body: String) -> Result<String> {
    if body.trim_start().starts_with('[') && serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
        Ok(body)
    } else {
        // Not upstream answering: unreachable, as far as sync can tell.
        Err(SyncError::new(
            ErrorKind::UpstreamUnreachable,
            format!(
                "{what}: upstream answered with something that is not a JSON array ({} bytes, starting {:?})",
                body.len(),
                body.chars().take(60).collect::<String>()
            ),
        )
        .with_hint("a proxy or captive portal may be in the way; the request will be retried"))
    }
}

/// A request that got no HTTP answer (timed out, no connection, connection
/// broken), with the innermost cause; Storage's client uses it too. reqwest's
/// Display includes the URL; it never includes headers, so a key does not
/// leak.
pub(crate) fn transport_error(what: &str, e: &reqwest::Error) -> SyncError {
    let (kind, how) = if e.is_timeout() {
        (ErrorKind::Timeout, "timed out")
    } else if e.is_connect() {
        (ErrorKind::UpstreamUnreachable, "could not connect")
    } else {
        (ErrorKind::UpstreamUnreachable, "connection failed")
    };
    let mut src = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    SyncError::new(kind, format!("{what}: {how} ({detail})")).with_source(Cause::of(e))
}

/// [`transport_error`] of a PostgREST request, with the operator's hint.
fn rest_transport_error(what: &str, e: &reqwest::Error) -> SyncError {
    transport_error(what, e).with_hint("check the internet connection and [supabase] url; capture continues locally meanwhile")
}

/// The one classifier of upstream HTTP answers.
pub fn classify(what: &str, status: StatusCode, body: &str) -> SyncError {
    let parsed: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let text = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let message = parsed.message.clone().unwrap_or_else(|| body.chars().take(200).collect());
    let mut full = format!("{what}: HTTP {}", status.as_u16());
    if let Some(c) = &parsed.code {
        full.push_str(&format!(" {c}"));
    }
    full.push_str(&format!(": {message}"));
    if let Some(d) = text(&parsed.details) {
        full.push_str(&format!("; details: {d}"));
    }
    let server_hint = text(&parsed.hint);
    let code = parsed.code.as_deref();
    // A gateway's own answer (no code, PostgREST's "cannot reach the
    // database" codes, a connection-level SQLSTATE) means upstream is not
    // there; another error with a transient status means it is there but
    // cannot do it now.
    let unanswered = match code {
        None | Some("PGRST000" | "PGRST001" | "PGRST002" | "PGRST003") => true,
        Some(c) => kind_of_sqlstate(Side::Upstream, c) == ErrorKind::UpstreamUnreachable,
    };
    let (kind, hint): (ErrorKind, Option<String>) = match status.as_u16() {
        401 => (
            ErrorKind::Auth,
            Some("the service key was rejected: use the service_role key (Supabase dashboard → Settings → API), not the anon key".into()),
        ),
        // A refusal raised by the sync functions (42501 with its own hint, e.g. a table this
        // project does not sync) already says what to fix; the key is not the problem then.
        403 if code == Some("42501") && server_hint.is_some() => (ErrorKind::Privilege, None),
        403 => (ErrorKind::Privilege, Some("the key lacks permission; use the service_role key".into())),
        404 => match code {
            Some("PGRST202") | Some("42883") => (
                ErrorKind::MissingObject,
                Some("the sync functions are not installed upstream: paste `centrovision-sync init --print-upstream-sql` into the Supabase SQL editor".into()),
            ),
            Some("PGRST205") | Some("42P01") => (
                ErrorKind::MissingObject,
                Some("the table does not exist upstream; create it, or remove it from [sync] tables".into()),
            ),
            _ => (ErrorKind::Config, Some("check [supabase] url (it should be https://<project>.supabase.co)".into())),
        },
        // Too large or too slow as it is (413; a statement timeout or a
        // program limit, whatever the status): a smaller request can fit.
        413 => (ErrorKind::TooLarge, Some("the request was too large for upstream; the pusher splits its batches by itself, elsewhere lower [sync] batch_size".into())),
        _ if code.is_some_and(|c| matches!(kind_of_sqlstate(Side::Upstream, c), ErrorKind::TooLarge | ErrorKind::TooSlow)) => {
            (kind_of_sqlstate(Side::Upstream, code.unwrap_or_default()), None)
        }
        408 if unanswered => (ErrorKind::Timeout, None),
        429 if unanswered => (ErrorKind::RateLimited, None),
        s if (s == 408 || s == 429 || s >= 500) && unanswered => (ErrorKind::UpstreamUnreachable, None),
        s if s == 408 || s == 429 || s >= 500 => (ErrorKind::Busy, None),
        400 | 409 => match code {
            Some(c) if c.len() == 5 && !c.starts_with("PGRST") => (kind_of_sqlstate(Side::Upstream, c), None),
            _ => (ErrorKind::Refused, None),
        },
        _ => (ErrorKind::Refused, None),
    };
    let mut err = SyncError::new(kind, full);
    err.hint = match (hint, server_hint) {
        (Some(ours), Some(theirs)) => Some(format!("{ours} (upstream says: {theirs})")),
        (ours, theirs) => ours.or(theirs),
    };
    if let Some(c) = parsed.code {
        err = err.with_code(c);
    }
    err
}

impl Upstream for RestUpstream {
    async fn apply(&self, changes: &str) -> Result<Outcome> {
        let expected = super::count_elements(changes);
        let mut body = String::with_capacity(changes.len() + 64);
        body.push_str("{\"writer\":");
        body.push_str(&serde_json::to_string(&self.writer).expect("a string serializes"));
        body.push_str(",\"changes\":");
        body.push_str(changes);
        body.push('}');
        let text = self.rpc("centrovision_sync_apply", body).await?;
        parse_outcome(&text, expected)
    }

    async fn fetch(&self, table: &TableRef<'_>, ids: &[String]) -> Result<String> {
        let what = format!("reading {} upstream", table.name);
        let mut rows: Vec<Box<RawValue>> = Vec::new();
        let mut rest = ids;
        while !rest.is_empty() {
            let cap = self.row_cap.load(Ordering::Relaxed);
            let n = if cap == 0 { rest.len() } else { rest.len().min(cap) };
            let q = vec![(column(table.pk), in_list(&rest[..n]))];
            let page = self.get_rows(&what, table, &q, true).await?;
            match page.total {
                Some(total) if page.rows.len() < total => {
                    // Cut by max rows: ask again for these keys, fewer at a time.
                    if page.rows.is_empty() {
                        return Err(SyncError::new(
                            ErrorKind::Contract,
                            format!("{what}: upstream returned no rows of {total} for {n} keys"),
                        ));
                    }
                    self.learn_cap(page.rows.len());
                }
                _ => {
                    rows.extend(page.rows);
                    rest = &rest[n..];
                }
            }
        }
        Ok(json_array(&rows))
    }

    async fn health(&self) -> Result<()> {
        match self.rpc("centrovision_sync_version", "{}".into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code.as_deref() == Some("PGRST202") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn contract_version(&self) -> Result<Option<i32>> {
        match self.rpc("centrovision_sync_version", "{}".into()).await {
            Ok(text) => text
                .trim()
                .parse::<i32>()
                .map(Some)
                .map_err(|_| SyncError::new(ErrorKind::Contract, format!("centrovision_sync_version returned {text:?}"))),
            Err(e) if e.code.as_deref() == Some("PGRST202") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn bucket_hashes(&self, h: &HashRequest<'_>) -> Result<String> {
        let body = serde_json::to_string(h).expect("serializable");
        self.rpc("centrovision_sync_bucket_hashes", body).await
    }

    async fn row_hashes(&self, h: &HashRequest<'_>, wanted: &[i32]) -> Result<String> {
        let mut v = serde_json::to_value(h).expect("serializable");
        v["wanted"] = serde_json::json!(wanted);
        self.rpc("centrovision_sync_row_hashes", v.to_string()).await
    }

    async fn changes(&self, req: &FeedRequest<'_>) -> Result<String> {
        let mut v = serde_json::to_value(req).expect("serializable");
        v["writer"] = serde_json::json!(self.writer);
        self.rpc("centrovision_sync_changes", v.to_string()).await
    }

    async fn conflicts(&self, q: &ConflictQuery<'_>) -> Result<String> {
        self.rpc("centrovision_sync_conflicts", serde_json::to_string(q).expect("serializable")).await
    }

    async fn conflict_count(&self, since: Option<&str>) -> Result<i64> {
        let body = serde_json::json!({"schema_name": self.schema, "since": since}).to_string();
        let text = self.rpc("centrovision_sync_conflict_count", body).await?;
        text.trim()
            .parse::<i64>()
            .map_err(|_| SyncError::new(ErrorKind::Contract, format!("centrovision_sync_conflict_count returned {text:?}")))
    }

    async fn prune(&self) -> Result<String> {
        self.rpc("centrovision_sync_prune", "{}".into()).await
    }

    async fn row_versions(&self, table: &str, keys: &[String], seen_in: Option<&str>) -> Result<String> {
        let body = serde_json::json!({"schema_name": self.schema, "table_name": table, "keys": keys, "seen_in": seen_in});
        self.rpc("centrovision_sync_row_versions", body.to_string()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;
    use crate::error::Class;

    #[test]
    fn answers_are_classified_by_status_and_code() {
        let c = |s: u16, b: &str| classify("x", StatusCode::from_u16(s).unwrap(), b);
        assert_eq!(c(401, r#"{"message":"Invalid API key","hint":"Double check"}"#).class(), Class::Operator);
        assert_eq!(c(401, r#"{"code":"PGRST301","message":"JWT could not be decoded"}"#).class(), Class::Operator);
        assert_eq!(c(403, "{}").class(), Class::Operator);
        let missing_fn = c(404, r#"{"code":"PGRST202","message":"Could not find the function public.centrovision_sync_apply(changes)"}"#);
        assert_eq!(missing_fn.class(), Class::Operator);
        assert!(missing_fn.to_string().contains("centrovision_sync_apply"), "{missing_fn}");
        let missing_table = c(404, r#"{"code":"PGRST205","message":"Could not find the table 'public.patients' in the schema cache"}"#);
        assert!(missing_table.to_string().contains("public.patients"), "{missing_table}");
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(s, "").class(), Class::Transient, "{s}");
        }
        assert_eq!(c(409, r#"{"code":"23505","message":"duplicate key"}"#).class(), Class::Data);
        assert_eq!(c(400, r#"{"code":"22P02","message":"invalid input syntax"}"#).class(), Class::Data);
        assert_eq!(c(413, "").class(), Class::Transient);
    }

    #[test]
    fn each_answer_gets_the_kind_callers_act_on() {
        let c = |s: u16, b: &str| classify("x", StatusCode::from_u16(s).unwrap(), b).kind;
        assert_eq!(c(401, "{}"), ErrorKind::Auth);
        assert_eq!(c(403, "{}"), ErrorKind::Privilege);
        assert_eq!(c(404, r#"{"code":"PGRST202","message":"no function"}"#), ErrorKind::MissingObject);
        assert_eq!(c(404, r#"{"code":"PGRST205","message":"no table"}"#), ErrorKind::MissingObject);
        assert_eq!(c(404, "<html>not found</html>"), ErrorKind::Config);
        assert_eq!(c(408, ""), ErrorKind::Timeout);
        assert_eq!(c(429, r#"{"message":"Too many requests"}"#), ErrorKind::RateLimited);
        assert_eq!(c(503, ""), ErrorKind::UpstreamUnreachable);
        assert_eq!(c(503, r#"{"code":"PGRST000","message":"Database client error"}"#), ErrorKind::UpstreamUnreachable);
        assert_eq!(c(503, r#"{"code":"57P01","message":"terminating connection"}"#), ErrorKind::UpstreamUnreachable);
        assert_eq!(c(500, r#"{"code":"XX000","message":"internal"}"#), ErrorKind::Busy);
        assert_eq!(c(409, r#"{"code":"23505","message":"duplicate key"}"#), ErrorKind::RejectedRow);
        assert_eq!(c(400, r#"{"code":"42501","message":"permission denied"}"#), ErrorKind::Privilege);
        assert_eq!(c(400, r#"{"code":"PGRST100","message":"bad filter"}"#), ErrorKind::Refused);
        assert_eq!(c(413, ""), ErrorKind::TooLarge);
        assert_eq!(c(500, r#"{"code":"57014","message":"canceling statement due to statement timeout"}"#), ErrorKind::TooSlow);
        assert_eq!(c(400, r#"{"code":"54000","message":"total size of jsonb array elements exceeds the maximum"}"#), ErrorKind::TooLarge);
    }

    #[test]
    fn a_table_the_project_does_not_sync_is_a_privilege_error_with_the_functions_own_hint() {
        let e = classify(
            "applying a batch upstream",
            StatusCode::FORBIDDEN,
            r#"{"code":"42501","message":"centrovision_sync_apply: auth.users is not a table this project syncs; nothing was written","details":null,"hint":"add it to [sync] tables and run `centrovision-sync init --upstream`"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Privilege);
        assert_eq!(e.class(), Class::Operator);
        assert!(!e.is_transient() && !e.is_outage());
        assert_eq!(e.code.as_deref(), Some("42501"));
        assert!(e.message.contains("auth.users"), "{e}");
        assert_eq!(e.hint.as_deref(), Some("add it to [sync] tables and run `centrovision-sync init --upstream`"));
        // A bare permission error still points at the key.
        let bare = classify("x", StatusCode::FORBIDDEN, r#"{"code":"42501","message":"permission denied for table t"}"#);
        assert!(bare.hint.as_deref().is_some_and(|h| h.contains("service_role key")), "{bare}");
    }

    #[test]
    fn a_gateway_that_cannot_answer_is_an_outage_and_a_busy_database_is_not() {
        let c = |s: u16, b: &str| classify("x", StatusCode::from_u16(s).unwrap(), b);
        assert!(c(503, "").is_outage());
        assert!(c(502, r#"{"code":"PGRST001","message":"lost"}"#).is_outage());
        assert!(c(429, "").is_outage());
        assert!(!c(500, r#"{"code":"40001","message":"could not serialize"}"#).is_outage());
        assert!(!c(401, "{}").is_outage());
    }

    #[test]
    fn a_captive_portal_answer_is_treated_as_upstream_unreachable() {
        let e = check_json_array("reading t upstream", "<html>login</html>".into()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamUnreachable);
        assert!(e.to_string().contains("captive portal"), "{e}");
    }

    #[test]
    fn only_jwt_shaped_keys_are_sent_as_bearer_tokens() {
        let h = auth_headers(&Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl")).unwrap();
        assert!(h.contains_key("apikey") && h.contains_key(reqwest::header::AUTHORIZATION));
        let h = auth_headers(&Secret::new("sb_secret_abc123")).unwrap();
        assert!(h.contains_key("apikey") && !h.contains_key(reqwest::header::AUTHORIZATION));
        assert!(h["apikey"].is_sensitive());
    }

    #[test]
    fn postgrest_error_body_is_carried_into_the_message() {
        let e = classify(
            "calling f",
            StatusCode::BAD_REQUEST,
            r#"{"code":"22007","message":"invalid input syntax for type timestamp","details":"d1","hint":"h1"}"#,
        );
        let s = e.to_string();
        assert!(s.contains("22007") && s.contains("invalid input syntax") && s.contains("d1") && s.contains("h1"), "{s}");
    }

    #[test]
    fn the_total_of_a_content_range_is_read_when_the_server_counted() {
        assert_eq!(range_total("0-299/1000"), Some(1000));
        assert_eq!(range_total("*/0"), Some(0));
        assert_eq!(range_total("0-9/*"), None);
    }

    #[test]
    fn arrays_of_json_are_read_as_text_and_everything_else_as_it_is() {
        let cols = |c: &[(&str, &str)]| -> Vec<Column> {
            c.iter().map(|(n, t)| Column { name: n.to_string(), type_name: t.to_string(), generated: false }).collect()
        };
        let t = |columns: &[Column]| select_list(&TableRef { name: "t", pk: "id", pk_type: "uuid", columns });
        assert_eq!(t(&cols(&[("id", "uuid"), ("x", "jsonb")])), "*");
        assert_eq!(t(&cols(&[("id", "uuid"), ("ja", "jsonb[]"), ("Mixed Case", "text")])), r#""id","ja"::text,"Mixed Case""#);
        // A name PostgREST cannot quote: read with `*` (the JSON rendering).
        assert_eq!(t(&cols(&[("id", "uuid"), ("ja", "json[]"), ("a\"b", "text")])), "*");
    }

    #[test]
    fn keys_are_quoted_in_filters_and_a_plus_is_never_sent_as_a_space() {
        let keys = vec!["a+b".to_string(), "c\"d".to_string(), "e,f".to_string()];
        assert_eq!(in_list(&keys), r#"in.("a+b","c\"d","e,f")"#);
        let mut u = Url::parse("https://x.supabase.co/rest/v1/t").unwrap();
        u.query_pairs_mut().append_pair("id", &in_list(&keys));
        assert!(u.as_str().contains("a%2Bb"), "{u}");
    }
}

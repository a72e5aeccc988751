//! A stand-in for Supabase's HTTP layer (the API gateway plus PostgREST),
//! backed by a real PostgreSQL database.
//!
//! What it is: an in-process HTTP server on `127.0.0.1:<random port>` that
//! answers `/rest/v1/...` the way a Supabase project does, for the part of
//! PostgREST's documented behaviour the sync client uses. Every request is
//! translated into SQL and run on the test's real database, so values, types,
//! JSON rendering (`json_agg`), constraint errors and SQLSTATEs all come from
//! PostgreSQL itself. It is not a mock of the database: nothing is canned.
//! No PostgREST binary can be installed here, hence this stand-in.
//!
//! Roles, as on a Supabase project (created on the cluster by the first
//! stand-in, idempotently; grants per database at start):
//! - `authenticator` (LOGIN NOINHERIT, not a superuser) is the only role the
//!   stand-in logs in as; `statement_timeout = 8s` on it, like Supabase's.
//! - Each request is one transaction: `BEGIN` (`READ ONLY` for GET/HEAD),
//!   `set_config('role', 'service_role', true)` (the service key's role:
//!   NOLOGIN, BYPASSRLS, not a superuser), `search_path` = the profile's
//!   schema then `public`, `request.jwt.claims`/`request.method`/
//!   `request.path`, then the impersonated role's own settings from
//!   `pg_db_role_setting` (PostgREST >= 12 applies them per request), then
//!   the query, then `COMMIT` (`ROLLBACK` on error). So a request can do
//!   nothing a superuser-only privilege allows (42501 → 403), and a
//!   statement past the timeout is 500 57014.
//! - `anon`, `authenticated` exist (3 s / 8 s timeouts) with Supabase's
//!   grants; no request uses them (only the service key is accepted).
//! - [`FUNCTION_OWNER`] (`postgres_owner`) stands for Supabase's `postgres`:
//!   LOGIN, CREATEROLE, CREATEDB, BYPASSRLS, not a superuser, with `GRANT SET
//!   ON PARAMETER session_replication_role` (PostgreSQL 15; what supautils
//!   allows `postgres` on Supabase). The kit installs the upstream SQL as
//!   this role after handing it the app's tables ([`give_tables_to_owner`]).
//! - Grants per exposed schema: USAGE and ALL on its tables and sequences to
//!   anon/authenticated/service_role, and default privileges of `postgres`
//!   and the owner role granting ALL on tables, sequences and functions (so
//!   new functions are executable by the API roles until revoked, as on
//!   Supabase); CREATE on the database and ALL on the schemas to the owner.
//! - Test hooks: [`PostgrestStandIn::set_statement_timeout`] (the
//!   authenticator's, per database), [`PostgrestStandIn::set_role_setting`]
//!   (any role's per-database setting, e.g. service_role's own timeout).
//!
//! Implemented (following the PostgREST docs and source, v12/v13):
//! - Gateway auth: `apikey` header (or `apikey` url param) must equal the
//!   service key; missing → 401 "No API key found in request", different →
//!   401 "Invalid API key" (both without `code`, like Supabase's gateway). An
//!   `Authorization: Bearer` token is checked like PostgREST checks a JWT:
//!   it must have 3 dot-separated parts ("Expected 3 parts in JWT; got N",
//!   PGRST301, which is what a `sb_secret_…` key sent as Bearer gets), and a
//!   JWT other than the service key itself is rejected (PGRST301; signatures
//!   are not verified, so no other JWT can be valid here).
//! - Profiles (`db-schemas`, [`StandInOptions::schemas`], default `public,
//!   graphql_public`): `Accept-Profile` on GET/HEAD, `Content-Profile` on
//!   POST pick the schema tables and functions are looked up in (no header:
//!   the first); a schema not exposed → 406 PGRST106 "Invalid schema: x",
//!   hint "Only the following schemas are exposed: ...".
//! - `Prefer` (several headers or comma-separated): `count=exact|planned|
//!   estimated` on reads (all counted exactly): `Content-Range:
//!   first-last/total`, 206 when that is a part of the total, 416 PGRST103
//!   for an offset past it; `tx=commit|rollback` only when overrides are
//!   allowed ([`PostgrestStandIn::set_tx_override`]; Supabase's `db-tx-end`
//!   is `commit`, which ignores it), then echoed in `Preference-Applied`;
//!   `timezone=<zone>` (a known zone name); `handling=strict` makes an
//!   unknown or invalid preference 400 PGRST122, the default (lenient)
//!   ignores it; `return`, `resolution`, `missing`, `max-affected`,
//!   `params` are accepted and ignored (they matter for writes, 501 here).
//! - `GET|HEAD /rest/v1/<table>` on tables/views of the profile's schema:
//!   `select=*` (or a plain column list), horizontal filters
//!   `col=[not.]op.value` with `eq gt gte lt lte neq like ilike match imatch
//!   cs cd ov sl sr nxr nxl adj`, `is.(null|true|false|unknown)`, `in.(...)`;
//!   logic trees `or=(...)`, `and=(...)`, `not.or=(...)` with nested
//!   `and(...)`/`or(...)`/`not.and(...)`; `order=col[.asc|.desc][.nullsfirst|
//!   .nullslast],...`; `limit`, `offset`; `db-max-rows` (silent cap).
//!   The query string is form-decoded (`+` is a space, as in PostgREST).
//!   Top-level filter values are taken verbatim (double quotes are NOT
//!   special there, exactly like PostgREST: `name=eq."d"` looks for `"d"`
//!   with the quotes; PostgreSQL's timestamptz input happens to ignore them);
//!   inside logic trees and `in` lists a value may be double-quoted with `\`
//!   escapes. A parameter whose value does not start with an operator is not
//!   a filter and is ignored, as PostgREST does (`id=eqq.1` returns every
//!   row). Values reach PostgreSQL as untyped (`unknown`) bind parameters in
//!   text format, as in PostgREST, so PostgreSQL infers the column's type and
//!   reports bad input itself (e.g. 22007 for a timestamp whose `+` became a
//!   space). Body: `coalesce(json_agg(_postgrest_t), '[]')` of the page
//!   (so rows are separated by `", \n "`, as from PostgREST), plus
//!   `Content-Range: <first>-<last>/*`. Sessions run with `TimeZone=UTC`, as
//!   on Supabase.
//! - `POST /rest/v1/rpc/<fn>` with a JSON object of named arguments, resolved
//!   against `pg_proc` in the profile's schema (argument names, defaults,
//!   overloads → PGRST202 / PGRST203), or the whole body for a function with
//!   a single unnamed json/jsonb parameter; called as `"schema"."fn"(a :=
//!   _x.a, ...) FROM json_to_record($1::json) AS _x(a <type>, ...)`. Scalar →
//!   bare JSON value, setof/TABLE → array (capped by max rows), single
//!   composite → object, void → 204.
//! - Errors: `{"code","details","hint","message"}` with PostgREST's SQLSTATE →
//!   HTTP status table (PostgREST's `mapSQLtoHTTP`: unlisted codes are 400),
//!   `Proxy-Status: PostgREST; error=<code>`. Unknown table → 404 PGRST205;
//!   filter/order on a missing column → 400 42703 from PostgreSQL (PGRST204
//!   is only for columns in write payloads); malformed parameters → 400
//!   PGRST100 with PostgREST's message shape (`"failed to parse filter
//!   (...)" (line 1, column N)`, the parser's complaint in `details`). A
//!   missing function, or argument names that match no overload, → 404
//!   PGRST202 with PostgREST's message and details; when overloads of that
//!   name exist the hint suggests one. Database unreachable → 503
//!   PGRST000; connection lost mid-request → 503 PGRST001; a fresh
//!   connection is tried on the next request (the pool drops dead clients).
//! - Gzip when the client asks (`Accept-Encoding: gzip`).
//! - Test hooks: fault injection ([`Faults`], applied before auth, like a
//!   proxy in front of the gateway; `DropConnection` makes the connection's
//!   socket fail its writes so hyper closes it without sending a byte),
//!   per-path request counts (every request, faulted or not), adjustable
//!   max rows (at start: [`StandInOptions::max_rows`], 1000 unless set or
//!   `PG_TEST_MAX_ROWS` says otherwise).
//!
//! Deliberately not implemented (answered 501 with code `STANDIN` so a test
//! that strays there fails loudly instead of passing on invented behaviour):
//! writes on tables (POST/PATCH/DELETE/PUT), GET on /rpc, embedding and
//! anything beyond a plain column list in `select`, JSON paths (`->`),
//! full-text-search operators, quantifiers (`eq(any)`), filters on embedded
//! resources, the OpenAPI root, non-object RPC bodies (bulk calls).
//! Also not emulated, and why:
//! - the schema cache: functions and tables are looked up live, so no
//!   PGRST202 right after an install and no `NOTIFY pgrst` needed (the
//!   client retries PGRST202 anyway; a cache would only add waiting);
//! - JWTs other than the service key, hence `anon`/`authenticated` requests
//!   and RLS policies (the sync only ever holds the service key, and
//!   service_role bypasses RLS);
//! - supautils itself: on Supabase `postgres` may run `SET
//!   session_replication_role` as a plain statement but not through
//!   `set_config()` or a function's SET clause; `GRANT SET ON PARAMETER`
//!   allows all three, so a function using the refused forms would pass
//!   here and fail there (the upstream SQL uses the plain statement);
//! - hosted-only limits: the gateway's request size and rate limits, the
//!   connection pooler (Supavisor) and its pool timeouts (PGRST003), and
//!   `pg_replication_origin_*` being unavailable (the owner role here could
//!   not call them either: they need a superuser);
//! - `Accept` negotiation, fuzzy "Perhaps you meant" hints for misspelled
//!   tables/functions (hint is null), `RAISE SQLSTATE 'PGRST'` custom
//!   responses, `count=planned|estimated` estimates (counted exactly), and
//!   `Prefer: return=` on RPC (PostgREST ignores it there too).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use bytes::BytesMut;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls};
use tower_http::compression::CompressionLayer;

use super::cluster::TestDb;

/// PostgREST's `db-max-rows` as configured on Supabase projects.
const DEFAULT_MAX_ROWS: usize = 1000;
/// The role PostgREST logs in as: LOGIN NOINHERIT, not a superuser; it
/// only switches to the role a request's key names.
pub const AUTHENTICATOR: &str = "authenticator";
const AUTHENTICATOR_PASSWORD: &str = "standin-authenticator";
/// The role a service key impersonates: NOLOGIN, BYPASSRLS, not a superuser.
pub const SERVICE_ROLE: &str = "service_role";
/// Supabase's `postgres`: owns the app's tables and the sync functions,
/// runs the SQL editor, and is not a superuser (supautils lets it `SET
/// session_replication_role`; emulated by `GRANT SET ON PARAMETER`).
pub const FUNCTION_OWNER: &str = "postgres_owner";
pub const FUNCTION_OWNER_PASSWORD: &str = "standin-owner";
/// Supabase's default "Exposed schemas" (`db-schemas`).
const DEFAULT_SCHEMAS: [&str; 2] = ["public", "graphql_public"];

/// The cluster-wide roles of a Supabase project (idempotent).
const ROLES_SQL: &str = "
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator LOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'postgres_owner') THEN
    CREATE ROLE postgres_owner LOGIN CREATEROLE CREATEDB BYPASSRLS;
  END IF;
END
$roles$;
ALTER ROLE authenticator WITH LOGIN NOINHERIT NOSUPERUSER PASSWORD 'standin-authenticator';
ALTER ROLE postgres_owner WITH LOGIN NOSUPERUSER PASSWORD 'standin-owner';
GRANT anon, authenticated, service_role TO authenticator;
GRANT SET ON PARAMETER session_replication_role TO postgres_owner;
ALTER ROLE authenticator SET statement_timeout = '8s';
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
";
/// Idle database connections kept for reuse (more are opened on demand).
const POOL_IDLE: usize = 4;
/// Request bodies larger than this are refused (413), far above anything a
/// test sends.
const MAX_BODY: usize = 64 * 1024 * 1024;
const JSON_CT: &str = "application/json; charset=utf-8";

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A running stand-in; see the module docs. Dropping it aborts the server.
pub struct PostgrestStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// What a Supabase project's API settings say (Settings → API).
#[derive(Clone, Debug)]
pub struct StandInOptions {
    /// "Exposed schemas" (`db-schemas`); the first is the default profile.
    pub schemas: Vec<String>,
    /// "Max rows" (`db-max-rows`) at start: Supabase's 1000, or
    /// `PG_TEST_MAX_ROWS` when set (adjustable later with
    /// [`PostgrestStandIn::set_max_rows`]).
    pub max_rows: usize,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions { schemas: DEFAULT_SCHEMAS.iter().map(|s| s.to_string()).collect(), max_rows: default_max_rows() }
    }
}

impl PostgrestStandIn {
    /// Connects to `db` (panics with the reason if it can't) and starts
    /// serving on 127.0.0.1 on a port the kernel picks, with Supabase's
    /// default exposed schemas.
    pub async fn start(db: &TestDb, service_key: &str) -> PostgrestStandIn {
        PostgrestStandIn::start_with(db, service_key, StandInOptions::default()).await
    }

    /// [`start`](Self::start) with the project's API settings.
    pub async fn start_with(db: &TestDb, service_key: &str, options: StandInOptions) -> PostgrestStandIn {
        let mut admin = db.config();
        admin.options("-c TimeZone=UTC").application_name("postgrest-standin-admin");
        if let Err(e) = prepare_database(&admin, &options.schemas).await {
            panic!("PostgREST stand-in: cannot set up Supabase's roles and grants in {}: {}", db.name, describe(&e));
        }
        let mut config = db.config();
        // Supabase sessions run in UTC: timestamptz renders as +00:00.
        config.user(AUTHENTICATOR).password(AUTHENTICATOR_PASSWORD);
        config.options("-c TimeZone=UTC").application_name("postgrest-standin");
        let pool = Pool { config, idle: Mutex::new(Vec::new()) };
        match pool.get().await {
            Ok(client) => pool.put(client),
            Err(e) => panic!("PostgREST stand-in: cannot connect to test database {} as {AUTHENTICATOR}: {}", db.name, describe(&e)),
        }
        let shared = Arc::new(Shared {
            key: service_key.to_owned(),
            pool,
            admin,
            database: db.name.clone(),
            schemas: options.schemas,
            faults: Faults::default(),
            requests: Mutex::new(Vec::new()),
            max_rows: AtomicUsize::new(options.max_rows),
            capped_reads: AtomicUsize::new(0),
            tx_override: AtomicBool::new(false),
            log_responses: AtomicBool::new(false),
            responses: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("PostgREST stand-in: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr of a bound listener");
        let app = Router::new()
            .fallback(handle)
            .with_state(shared.clone())
            .layer(CompressionLayer::new())
            // Outside the compression layer, which skips responses that carry
            // a Content-Range (meant for byte ranges; PostgREST's is rows).
            .layer(axum::middleware::map_response(restore_content_range));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(KillableListener { inner: listener }, app.into_make_service_with_connect_info::<ConnHandle>())
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
            if let Err(e) = server.await {
                eprintln!("[postgrest stand-in] server ended: {e}");
            }
        });
        PostgrestStandIn { shared, addr, shutdown: Some(tx), task: Some(task) }
    }

    /// `http://127.0.0.1:PORT`; the client appends `/rest/v1/...`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// How many requests whose (raw, undecoded) path starts with
    /// `route_prefix` were received, including faulted and refused ones.
    pub fn requests(&self, route_prefix: &str) -> usize {
        lock(&self.shared.requests).iter().filter(|p| p.starts_with(route_prefix)).count()
    }

    /// From now on keep the body of every RPC answer and table read (path,
    /// body), so a test can show what upstream returned.
    pub fn log_responses(&self) {
        self.shared.log_responses.store(true, Ordering::SeqCst);
    }

    /// The kept answers (see [`log_responses`](Self::log_responses)) whose
    /// raw path starts with `route_prefix`.
    pub fn response_log(&self, route_prefix: &str) -> Vec<(String, String)> {
        lock(&self.shared.responses).iter().filter(|(p, _)| p.starts_with(route_prefix)).cloned().collect()
    }

    /// PostgREST's `db-max-rows` (default 1000): reads and set-returning RPCs
    /// return at most this many rows, silently.
    pub fn set_max_rows(&self, n: usize) {
        self.shared.max_rows.store(n, Ordering::SeqCst);
    }

    /// How many table reads (GET/HEAD) the max-rows cap cut short: they
    /// asked for more rows than max rows (or set no limit) and got exactly
    /// max rows. So a test can show it paged past the cap.
    pub fn capped_reads(&self) -> usize {
        self.shared.capped_reads.load(Ordering::SeqCst)
    }

    /// `ALTER ROLE authenticator SET statement_timeout` for this database
    /// (Supabase: 8 s); `None` goes back to that default. Service-role
    /// requests run under it (service_role has no setting of its own).
    /// Idle connections are dropped so the next request logs in anew.
    pub async fn set_statement_timeout(&self, timeout: Option<Duration>) {
        let value = timeout.map(|d| format!("{}ms", d.as_millis()));
        self.set_role_setting(AUTHENTICATOR, "statement_timeout", value.as_deref()).await;
    }

    /// `ALTER ROLE <role> IN DATABASE <this db> SET <name> = <value>` (or
    /// RESET with `None`). For the impersonated role, PostgREST applies its
    /// settings to each request (`set_config(..., true)`); the
    /// authenticator's apply at login.
    pub async fn set_role_setting(&self, role: &str, name: &str, value: Option<&str>) {
        let (client, connection) = self.shared.admin.connect(NoTls).await.expect("PostgREST stand-in: admin connection");
        tokio::spawn(connection);
        let target = format!("ROLE {} IN DATABASE {}", quote_ident(role), quote_ident(&self.shared.database));
        let sql = match value {
            Some(v) => format!("ALTER {target} SET {} = '{}'", quote_ident(name), v.replace('\'', "''")),
            None => format!("ALTER {target} RESET {}", quote_ident(name)),
        };
        if let Err(e) = client.batch_execute(&sql).await {
            panic!("PostgREST stand-in: {sql}: {}", describe(&e));
        }
        lock(&self.shared.pool.idle).clear();
    }

    /// PostgREST's `db-tx-end`: `false` (Supabase's `commit`) ignores
    /// `Prefer: tx=rollback`; `true` (`commit-allow-override`) honours it.
    pub fn set_tx_override(&self, allowed: bool) {
        self.shared.tx_override.store(allowed, Ordering::SeqCst);
    }

    /// Graceful stop (in-flight requests get up to 5 s), then abort.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err()
        {
            task.abort();
        }
        lock(&self.shared.pool.idle).clear();
    }
}

impl Drop for PostgrestStandIn {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Faults to inject, matched by path prefix (raw path, e.g.
/// `"/rest/v1/rpc/centrovision_sync_apply"`, or `"/rest/v1/"` for all).
/// Queued faults are consumed first, in order; then a persistent fault (the
/// longest matching prefix) applies to every matching request until cleared.
#[derive(Default)]
pub struct Faults {
    queued: Mutex<VecDeque<(String, Fault)>>,
    persistent: Mutex<Vec<(String, Fault)>>,
}

impl Faults {
    /// Queue a fault for the next request whose path starts with `path_prefix`.
    pub fn push(&self, path_prefix: &str, fault: Fault) {
        lock(&self.queued).push_back((path_prefix.to_owned(), fault));
    }

    /// Drop every queued and persistent fault.
    pub fn clear(&self) {
        lock(&self.queued).clear();
        lock(&self.persistent).clear();
    }

    /// While `Some`, every request under `path_prefix` gets `fault` (e.g. a
    /// long outage); `None` removes it.
    pub fn set_persistent(&self, path_prefix: &str, fault: Option<Fault>) {
        let mut persistent = lock(&self.persistent);
        persistent.retain(|(p, _)| p != path_prefix);
        if let Some(fault) = fault {
            persistent.push((path_prefix.to_owned(), fault));
        }
    }

    fn take(&self, path: &str) -> Option<Fault> {
        {
            let mut queued = lock(&self.queued);
            if let Some(i) = queued.iter().position(|(p, _)| path.starts_with(p.as_str())) {
                return queued.remove(i).map(|(_, f)| f);
            }
        }
        lock(&self.persistent).iter().filter(|(p, _)| path.starts_with(p.as_str())).max_by_key(|(p, _)| p.len()).map(|(_, f)| f.clone())
    }
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status instead of serving: `Retry-After: N` when given;
    /// body as given, else `{"message":"<reason phrase>"}`.
    Status { code: u16, retry_after_secs: Option<u64>, body: Option<String> },
    /// Sleep, then serve normally.
    Delay(Duration),
    /// Close the TCP connection without sending any response byte.
    DropConnection,
    /// 200 with a JSON content type and a body that is not JSON.
    MalformedJson,
}

// ---------------------------------------------------------------------------
// Server state, pool
// ---------------------------------------------------------------------------

struct Shared {
    key: String,
    /// Connections as the authenticator.
    pool: Pool,
    /// The cluster superuser, for the test hooks only.
    admin: tokio_postgres::Config,
    database: String,
    /// Exposed schemas; the first is the default profile.
    schemas: Vec<String>,
    faults: Faults,
    requests: Mutex<Vec<String>>,
    max_rows: AtomicUsize,
    /// Table reads the max-rows cap cut short.
    capped_reads: AtomicUsize,
    tx_override: AtomicBool,
    /// While set, the bodies of RPC answers and table reads are kept
    /// ([`PostgrestStandIn::response_log`]).
    log_responses: AtomicBool,
    responses: Mutex<Vec<(String, String)>>,
}

/// `db-max-rows` at start: Supabase's 1000, or `PG_TEST_MAX_ROWS` to run
/// the suite under a project whose admin lowered it.
fn default_max_rows() -> usize {
    std::env::var("PG_TEST_MAX_ROWS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(DEFAULT_MAX_ROWS)
}

/// Roles (cluster-wide, serialised within this process: concurrent CREATE
/// ROLEs race) and this database's grants as a Supabase project has them:
/// the API roles may use every exposed schema and everything in it, now
/// and (default privileges of `postgres` and the owner role) later.
async fn prepare_database(admin: &tokio_postgres::Config, schemas: &[String]) -> Result<(), tokio_postgres::Error> {
    static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let (client, connection) = admin.connect(NoTls).await?;
    tokio::spawn(connection);
    {
        let _one_at_a_time = ROLES.lock().await;
        client.batch_execute(ROLES_SQL).await?;
    }
    let db: String = client.query_one("SELECT current_database()", &[]).await?.get(0);
    let mut sql = format!("GRANT CREATE ON DATABASE {} TO {FUNCTION_OWNER};\n", quote_ident(&db));
    for schema in schemas {
        let exists = client.query_opt("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", &[schema]).await?.is_some();
        if !exists {
            continue;
        }
        let s = quote_ident(schema);
        sql.push_str(&format!(
            "GRANT USAGE ON SCHEMA {s} TO anon, authenticated, service_role;
             GRANT ALL ON SCHEMA {s} TO {FUNCTION_OWNER};
             GRANT ALL ON ALL TABLES IN SCHEMA {s} TO anon, authenticated, service_role;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres, {FUNCTION_OWNER} IN SCHEMA {s}
               GRANT ALL ON TABLES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres, {FUNCTION_OWNER} IN SCHEMA {s}
               GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE postgres, {FUNCTION_OWNER} IN SCHEMA {s}
               GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;\n"
        ));
    }
    client.batch_execute(&sql).await
}

/// Hands every table of `schema` to [`FUNCTION_OWNER`], as on Supabase,
/// where `postgres` owns the app's tables (the tests create them as the
/// cluster superuser). Needed before that role installs the upstream SQL:
/// re-enrolling a table drops its trigger, which only the owner may.
pub async fn give_tables_to_owner(superuser: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let rows = superuser
        .query(
            "SELECT format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, $2::text)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relowner <> $2::text::regrole",
            &[&schema, &FUNCTION_OWNER],
        )
        .await?;
    let sql: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    superuser.batch_execute(&sql.join(";\n")).await
}

/// tokio-postgres' Display of a server error is just "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A poisoned lock only means another request panicked; the data is fine.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    async fn get(&self) -> Result<Client, tokio_postgres::Error> {
        loop {
            let next = lock(&self.idle).pop();
            match next {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            // Ends when the server goes away; the client then reports
            // is_closed() and is dropped by the pool.
            let _ = connection.await;
        });
        Ok(client)
    }

    fn put(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < POOL_IDLE {
            idle.push(client);
        }
    }
}

// ---------------------------------------------------------------------------
// Connections that a handler can kill (Fault::DropConnection)
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct KillSwitch {
    killed: AtomicBool,
}

/// Connect info handed to the handler: lets it kill its own connection.
#[derive(Debug, Clone)]
struct ConnHandle {
    kill: Arc<KillSwitch>,
}

impl ConnHandle {
    fn kill(&self) {
        self.kill.killed.store(true, Ordering::SeqCst);
    }
}

struct KillableListener {
    inner: TcpListener,
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnHandle;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(KillSwitch::default());
                    return (KillableStream { inner: stream, kill: kill.clone() }, ConnHandle { kill });
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()?;
        Ok(ConnHandle { kill: Arc::default() })
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP stream whose reads and writes fail once killed: hyper then drops
/// the connection (closing the socket) without having written the response.
struct KillableStream {
    inner: TcpStream,
    kill: Arc<KillSwitch>,
}

impl KillableStream {
    fn killed(&self) -> bool {
        self.kill.killed.load(Ordering::SeqCst)
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "dropped by fault injection")
}

impl AsyncRead for KillableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

fn response(status: u16, content_type: &str, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json_response(status: u16, body: &Value) -> Response {
    response(status, JSON_CT, body.to_string())
}

/// A PostgREST error body, with its `Proxy-Status` header.
fn pgrst_error(status: u16, code: &str, message: &str, details: Option<&str>, hint: Option<&str>) -> Response {
    let mut resp = json_response(status, &json!({"code": code, "details": details, "hint": hint, "message": message}));
    if let Ok(v) = HeaderValue::from_str(&format!("PostgREST; error={code}")) {
        resp.headers_mut().insert("proxy-status", v);
    }
    resp
}

/// A feature this stand-in does not implement (see the module docs).
fn not_implemented(what: &str) -> Response {
    json_response(
        501,
        &json!({
            "code": "STANDIN",
            "details": what,
            "hint": "extend tests/it/support/postgrest.rs if the client needs this",
            "message": "not implemented by the PostgREST stand-in",
        }),
    )
}

/// PostgREST's SQLSTATE → HTTP status table (`mapSQLtoHTTP`), for an
/// authenticated (service role) request. Order matters.
fn http_status_for_sqlstate(code: &str, message: &str) -> u16 {
    let starts = |p: &str| code.starts_with(p);
    match code {
        _ if starts("08") => 503,
        _ if starts("09") => 500,
        _ if starts("0L") || starts("0P") => 403,
        "23503" | "23505" => 409,
        "25006" => 405,
        "21000" if message.ends_with("requires a WHERE clause") => 400,
        "21000" => 500,
        "22023" if message.starts_with("role") && message.ends_with("does not exist") => 401,
        "22023" => 400,
        _ if starts("25") || starts("2D") || starts("38") || starts("39") || starts("3B") => 500,
        _ if starts("28") => 403,
        _ if starts("40") => 500,
        "53400" => 500,
        _ if starts("53") => 503,
        _ if starts("54") || starts("55") => 500,
        "57P01" => 503,
        _ if starts("57") || starts("58") || starts("F0") || starts("HV") => 500,
        "P0001" => 400,
        _ if starts("P0") || starts("XX") => 500,
        "42883" if message.starts_with("function xmlagg(") => 406,
        "42883" | "42P01" => 404,
        "42P17" => 500,
        "42501" => 403,
        _ if starts("PT") => code[2..].parse::<u16>().ok().filter(|s| (100..600).contains(s)).unwrap_or(500),
        _ => 400,
    }
}

/// Maps a failed statement to PostgREST's response; the bool says whether
/// the client is unusable (and must not go back to the pool).
fn db_error_response(e: &tokio_postgres::Error) -> (Response, bool) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let status = http_status_for_sqlstate(code, db.message());
        let broken = e.is_closed() || code.starts_with("57P") || code.starts_with("08");
        (pgrst_error(status, code, db.message(), db.detail(), db.hint()), broken)
    } else {
        (pgrst_error(503, "PGRST001", "Database client error. Retrying the connection.", Some(&e.to_string()), None), true)
    }
}

fn connection_error_response(e: &tokio_postgres::Error) -> Response {
    let details = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    pgrst_error(503, "PGRST000", "Database connection error. Retrying the connection.", Some(&details), None)
}

fn fault_response(fault: Fault, conn: &ConnHandle) -> Option<Response> {
    match fault {
        Fault::Status { code, retry_after_secs, body } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (ct, body) = match body {
                Some(b) if serde_json::from_str::<Value>(&b).is_ok() => (JSON_CT, b),
                Some(b) => ("text/plain; charset=utf-8", b),
                None => (JSON_CT, json!({"message": status.canonical_reason().unwrap_or("Error")}).to_string()),
            };
            let mut resp = response(status.as_u16(), ct, body);
            if let Some(secs) = retry_after_secs {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Some(resp)
        }
        Fault::Delay(_) => None,
        Fault::DropConnection => {
            conn.kill();
            // Never written: the killed stream fails the write.
            Some(response(500, "text/plain", ""))
        }
        Fault::MalformedJson => Some(response(200, JSON_CT, "{\"not json")),
    }
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

/// Carries PostgREST's `Content-Range` past the compression layer.
const CONTENT_RANGE_LATER: &str = "x-standin-content-range";

async fn restore_content_range(mut resp: Response) -> Response {
    if let Some(v) = resp.headers_mut().remove(CONTENT_RANGE_LATER) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

async fn handle(State(st): State<Arc<Shared>>, ConnectInfo(conn): ConnectInfo<ConnHandle>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    lock(&st.requests).push(path.clone());
    if let Some(fault) = st.faults.take(&path) {
        if let Fault::Delay(d) = fault {
            tokio::time::sleep(d).await;
        } else if let Some(resp) = fault_response(fault, &conn) {
            return resp;
        }
    }
    serve(&st, req).await
}

async fn serve(st: &Shared, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let Some(rest) = path.strip_prefix("/rest/v1/") else {
        // Supabase's gateway (Kong) for unknown routes, before any auth.
        return json_response(404, &json!({"message": "no Route matched with those values"}));
    };
    let params = parse_query(&query);
    if let Some(resp) = check_auth(&st.key, req.headers(), &params) {
        return resp;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    // PostgREST reads Accept-Profile on GET/HEAD, Content-Profile otherwise.
    let profile_header = if method == Method::GET || method == Method::HEAD { "accept-profile" } else { "content-profile" };
    let schema = match req.headers().get(profile_header) {
        None => st.schemas[0].clone(),
        Some(v) => {
            let wanted = String::from_utf8_lossy(v.as_bytes()).into_owned();
            if !st.schemas.contains(&wanted) {
                return pgrst_error(
                    406,
                    "PGRST106",
                    &format!("Invalid schema: {wanted}"),
                    None,
                    Some(&format!("Only the following schemas are exposed: {}", st.schemas.join(", "))),
                );
            }
            wanted
        }
    };
    let prefs = match Prefs::parse(req.headers(), st.tx_override.load(Ordering::SeqCst)) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let ctx = RequestCtx {
        schema,
        prefs,
        read_only: method == Method::GET || method == Method::HEAD,
        method: method.to_string(),
        path: path.clone(),
    };
    match segments.as_slice() {
        [""] => not_implemented("the OpenAPI root (GET /rest/v1/)"),
        ["rpc", func] if !func.is_empty() => {
            if method != Method::POST {
                return not_implemented("RPC with a method other than POST");
            }
            let func = percent_decode(func);
            let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
                Ok(b) => b,
                Err(_) => return json_response(413, &json!({"message": "Payload too large"})),
            };
            let resp = call_rpc(st, &ctx, &func, &body).await;
            let resp = keep_response(st, &ctx.path, resp).await;
            ctx.prefs.applied(resp)
        }
        [table] if !table.is_empty() => {
            let table = percent_decode(table);
            let resp = match method {
                Method::GET => read_table(st, &ctx, &table, &params, false).await,
                Method::HEAD => read_table(st, &ctx, &table, &params, true).await,
                _ => not_implemented("writes on tables (POST/PATCH/PUT/DELETE)"),
            };
            let resp = keep_response(st, &ctx.path, resp).await;
            ctx.prefs.applied(resp)
        }
        _ => pgrst_error(404, "PGRST125", "Invalid path specified in request URL", None, None),
    }
}

// ---------------------------------------------------------------------------
// The request's transaction, as PostgREST runs it
// ---------------------------------------------------------------------------

/// What a request runs under.
struct RequestCtx {
    /// The profile: where tables and functions are looked up.
    schema: String,
    prefs: Prefs,
    /// GET/HEAD run in a READ ONLY transaction.
    read_only: bool,
    method: String,
    path: String,
}

/// The `Prefer` header, as PostgREST reads it: known preferences are
/// honoured where they apply, unknown or invalid ones ignored unless
/// `handling=strict` (then 400 PGRST122).
#[derive(Debug, Default)]
struct Prefs {
    /// `count=exact|planned|estimated` (all counted exactly here).
    count: Option<String>,
    /// `tx=rollback`, honoured only with `db-tx-end = commit-allow-override`.
    rollback: bool,
    strict: bool,
    /// `timezone=<name>` (a valid zone name).
    timezone: Option<String>,
    /// What goes into `Preference-Applied`.
    applied: Vec<String>,
}

impl Prefs {
    fn parse(headers: &HeaderMap, tx_override: bool) -> Result<Prefs, Rejection> {
        let mut p = Prefs::default();
        let mut invalid = Vec::new();
        let items: Vec<String> = headers
            .get_all("prefer")
            .iter()
            .flat_map(|v| String::from_utf8_lossy(v.as_bytes()).split(',').map(|x| x.trim().to_owned()).collect::<Vec<_>>())
            .filter(|x| !x.is_empty())
            .collect();
        for item in &items {
            let (k, v) = item.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((item.as_str(), ""));
            match (k, v) {
                ("count", "exact" | "planned" | "estimated") => {
                    p.count = Some(v.to_owned());
                }
                ("tx", "commit" | "rollback") => {
                    if tx_override {
                        p.rollback = v == "rollback";
                        p.applied.push(item.clone());
                    }
                }
                ("handling", "strict") => {
                    p.strict = true;
                    p.applied.push(item.clone());
                }
                ("handling", "lenient") => p.applied.push(item.clone()),
                ("timezone", tz) if !tz.is_empty() => p.timezone = Some(tz.to_owned()),
                ("return", "minimal" | "headers-only" | "representation")
                | ("resolution", "merge-duplicates" | "ignore-duplicates")
                | ("missing", "default" | "null")
                | ("params", "single-object") => {
                    // Valid, but only for writes (501 here) or deprecated.
                }
                ("max-affected", n) if n.parse::<i64>().is_ok() => {}
                _ => invalid.push(item.clone()),
            }
        }
        if p.strict && !invalid.is_empty() {
            return Err(Box::new(pgrst_error(
                400,
                "PGRST122",
                "Invalid preferences given with handling=strict",
                Some(&format!("Invalid preferences: {}", invalid.join(", "))),
                None,
            )));
        }
        Ok(p)
    }

    /// Adds `Preference-Applied` to a successful answer.
    fn applied(&self, mut resp: Response) -> Response {
        if resp.status().is_success()
            && !self.applied.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.applied.join(", "))
        {
            resp.headers_mut().insert("preference-applied", v);
        }
        resp
    }
}

/// Opens the request's transaction the way PostgREST does: BEGIN (READ
/// ONLY for reads), switch to the key's role, the request's settings, then
/// the impersonated role's own settings (`ALTER ROLE service_role SET ...`,
/// applied per request like PostgREST >= 12 does).
async fn begin(client: &Client, ctx: &RequestCtx) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(if ctx.read_only {
            "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
        } else {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        })
        .await?;
    let search_path =
        if ctx.schema == "public" { quote_ident("public") } else { format!("{}, {}", quote_ident(&ctx.schema), quote_ident("public")) };
    let claims = json!({"role": SERVICE_ROLE}).to_string();
    client
        .query(
            "SELECT set_config('role', $1, true), set_config('search_path', $2, true),
                    set_config('request.jwt.claims', $3, true), set_config('request.method', $4, true),
                    set_config('request.path', $5, true)",
            &[&SERVICE_ROLE, &search_path, &claims, &ctx.method, &ctx.path],
        )
        .await?;
    let settings = client
        .query(
            "SELECT split_part(s, '=', 1), substr(s, strpos(s, '=') + 1)
               FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) AS s
              WHERE d.setrole = $1::text::regrole
                AND d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
              ORDER BY d.setdatabase",
            &[&SERVICE_ROLE],
        )
        .await?;
    for row in settings {
        let (name, value): (String, String) = (row.get(0), row.get(1));
        client.query("SELECT set_config($1, $2, true)", &[&name, &value]).await?;
    }
    if let Some(tz) = &ctx.prefs.timezone {
        let known = client.query_opt("SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = $1", &[tz]).await?.is_some();
        if known {
            client.query("SELECT set_config('timezone', $1, true)", &[tz]).await?;
        }
    }
    Ok(())
}

/// Ends the request's transaction: COMMIT (ROLLBACK with an honoured
/// `tx=rollback`), then the connection goes back to the pool.
async fn finish(st: &Shared, client: Client, ctx: &RequestCtx, ok: Response) -> Response {
    let end = if ctx.prefs.rollback { "ROLLBACK" } else { "COMMIT" };
    match client.batch_execute(end).await {
        Ok(()) => {
            st.pool.put(client);
            ok
        }
        Err(e) => fail(st, client, &e).await,
    }
}

/// A failed statement: PostgREST's error response; the transaction is
/// rolled back and a usable connection returned to the pool.
async fn fail(st: &Shared, client: Client, e: &tokio_postgres::Error) -> Response {
    let (resp, broken) = db_error_response(e);
    if !broken && client.batch_execute("ROLLBACK").await.is_ok() {
        st.pool.put(client);
    }
    resp
}

/// A request answered without an error from the database (e.g. 404 after a
/// catalog lookup): roll back, keep the connection.
async fn abandon(st: &Shared, client: Client, resp: Response) -> Response {
    if client.batch_execute("ROLLBACK").await.is_ok() {
        st.pool.put(client);
    }
    resp
}

/// Supabase gateway (apikey) then PostgREST (Bearer JWT).
fn check_auth(key: &str, headers: &HeaderMap, params: &[(String, String)]) -> Option<Response> {
    let apikey = headers
        .get("apikey")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| params.iter().find(|(k, _)| k == "apikey").map(|(_, v)| v.clone()));
    match apikey {
        None => {
            return Some(json_response(
                401,
                &json!({"message": "No API key found in request",
                        "hint": "No `apikey` request header or url param was found."}),
            ));
        }
        Some(k) if k != key => {
            return Some(json_response(
                401,
                &json!({"message": "Invalid API key",
                        "hint": "Double check your Supabase `anon` or `service_role` API key."}),
            ));
        }
        Some(_) => {}
    }
    let auth = headers.get(header::AUTHORIZATION)?;
    let auth = String::from_utf8_lossy(auth.as_bytes()).into_owned();
    let (scheme, token) = auth.split_once(' ').unwrap_or((auth.as_str(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // PostgREST only looks at Bearer tokens.
        return None;
    }
    let token = token.trim();
    let message = if token.is_empty() {
        "Empty JWT is sent in Authorization header".to_owned()
    } else if token.split('.').count() != 3 {
        format!("Expected 3 parts in JWT; got {}", token.split('.').count())
    } else if token != key {
        "JWT cryptographic operation failed".to_owned()
    } else {
        return None;
    };
    let mut resp = pgrst_error(401, "PGRST301", &message, None, None);
    let challenge = format!("Bearer error=\"invalid_token\", error_description={message:?}");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Some(resp)
}

/// `application/x-www-form-urlencoded` decoding, as PostgREST does
/// (`parseQueryReplacePlus True`): `+` is a space.
fn parse_query(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// Path segment decoding (`+` stays a plus in paths).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// GET /rest/v1/<table>
// ---------------------------------------------------------------------------

/// A request refused before reaching the database (boxed: `Response` is big).
type Rejection = Box<Response>;

const LOGIC_KEYS: [&str; 2] = ["and", "or"];
const RESERVED_EMBEDDABLE: [&str; 5] = ["order", "limit", "offset", "and", "or"];

/// One item of `select`: `*`, or a column with an optional `::type` cast
/// (PostgREST keeps the column's name as the key of a cast value).
struct SelectItem {
    column: String,
    cast: Option<String>,
}

struct ReadRequest {
    select: Vec<SelectItem>,
    filters: Vec<Filter>,
    logic: Vec<LogicTree>,
    order: Vec<OrderTerm>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn parse_read_request(params: &[(String, String)]) -> Result<ReadRequest, Rejection> {
    let mut req = ReadRequest {
        select: vec![SelectItem { column: "*".to_owned(), cast: None }],
        filters: Vec::new(),
        logic: Vec::new(),
        order: Vec::new(),
        limit: None,
        offset: None,
    };
    for (k, v) in params {
        if k == "apikey" {
            continue;
        }
        if k == "select" {
            req.select = parse_select(v)?;
            continue;
        }
        if k == "columns" || k == "on_conflict" {
            continue;
        }
        let last = k.rsplit('.').next().unwrap_or(k);
        if RESERVED_EMBEDDABLE.contains(&last) {
            let embedded = k.split('.').any(|s| s != "not" && s != last);
            if embedded {
                return Err(Box::new(not_implemented("order/limit/offset/logic on embedded resources")));
            }
            match last {
                "order" => req.order = parse_order(v)?,
                "limit" => {
                    // PostgREST: `readMaybe`, so a non-integer limit is ignored.
                    if let Ok(n) = v.trim().parse::<i64>() {
                        req.limit = Some(n);
                    }
                }
                "offset" => {
                    if let Ok(n) = v.trim().parse::<i64>() {
                        req.offset = Some(n);
                    }
                }
                _ => {
                    debug_assert!(LOGIC_KEYS.contains(&last));
                    let op = if k.split('.').any(|s| s == "not") { format!("not.{last}") } else { last.to_owned() };
                    req.logic.push(parse_logic_param(&op, v)?);
                }
            }
            continue;
        }
        if k.contains('.') || has_operator(v) {
            req.filters.push(parse_filter_param(k, v)?);
        }
        // Anything else is an RPC-style parameter, ignored on table reads.
    }
    if let Some(limit) = req.limit
        && limit < 0
    {
        return Err(Box::new(pgrst_error(
            416,
            "PGRST103",
            "Requested range not satisfiable",
            Some("Limit should be greater than or equal to zero."),
            None,
        )));
    }
    Ok(req)
}

/// PostgREST's test for "this value is a filter" (else it's an RPC param).
fn has_operator(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    let first_is_fts = v.split_once('(').is_some_and(|(x, _)| FTS_OPS.contains(&x));
    match parts.as_slice() {
        ["not", _, ..] => true,
        ["is", ..] | ["in", ..] => true,
        [x, ..] => simple_operator(x).is_some() || FTS_OPS.contains(x) || first_is_fts,
        [] => false,
    }
}

async fn read_table(st: &Shared, ctx: &RequestCtx, table: &str, params: &[(String, String)], head: bool) -> Response {
    let req = match parse_read_request(params) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let client = match st.pool.get().await {
        Ok(c) => c,
        Err(e) => return connection_error_response(&e),
    };
    if let Err(e) = begin(&client, ctx).await {
        return fail(st, client, &e).await;
    }
    let schema = ctx.schema.as_str();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2
                AND c.relkind IN ('r', 'v', 'm', 'f', 'p')",
            &[&schema, &table],
        )
        .await;
    match exists {
        Ok(Some(_)) => {}
        Ok(None) => {
            let resp =
                pgrst_error(404, "PGRST205", &format!("Could not find the table '{schema}.{table}' in the schema cache"), None, None);
            return abandon(st, client, resp).await;
        }
        Err(e) => return fail(st, client, &e).await,
    }

    let max_rows = st.max_rows.load(Ordering::SeqCst) as i64;
    let mut sql = SqlBuilder::default();
    let t = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let select = req
        .select
        .iter()
        .map(|c| match (&c.cast, c.column.as_str()) {
            (_, "*") => format!("{t}.*"),
            (None, col) => format!("{t}.{}", quote_ident(col)),
            (Some(ty), col) => format!("CAST({t}.{q} AS {ty}) AS {q}", q = quote_ident(col)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut conds: Vec<String> = Vec::new();
    for f in &req.filters {
        conds.push(sql.filter(&t, f));
    }
    for l in &req.logic {
        conds.push(sql.logic(&t, l));
    }
    let where_clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    let mut inner = format!("SELECT {select} FROM {t}{where_clause}");
    if !req.order.is_empty() {
        let terms: Vec<String> = req
            .order
            .iter()
            .map(|o| {
                let mut s = format!("{t}.{}", quote_ident(&o.field));
                match o.desc {
                    Some(true) => s.push_str(" DESC"),
                    Some(false) => s.push_str(" ASC"),
                    None => {}
                }
                match o.nulls_first {
                    Some(true) => s.push_str(" NULLS FIRST"),
                    Some(false) => s.push_str(" NULLS LAST"),
                    None => {}
                }
                s
            })
            .collect();
        inner.push_str(" ORDER BY ");
        inner.push_str(&terms.join(", "));
    }
    let limit = req.limit.map_or(max_rows, |l| l.min(max_rows));
    let offset = req.offset.unwrap_or(0).max(0);
    inner.push_str(&format!(" LIMIT {limit} OFFSET {offset}"));
    // `Prefer: count=...`: the total of the filtered rows, whatever the
    // limit and the max-rows cap.
    let total = if ctx.prefs.count.is_some() { format!("(SELECT count(*) FROM {t}{where_clause})::int8") } else { "NULL::int8".to_owned() };
    let query = format!(
        "SELECT coalesce(json_agg(_postgrest_t), '[]')::text, count(_postgrest_t)::int8, {total} \
         FROM ({inner}) _postgrest_t"
    );
    let row = match client.query_one(&query, &sql.refs()).await {
        Ok(row) => row,
        Err(e) => return fail(st, client, &e).await,
    };
    let body: String = row.get(0);
    let count: i64 = row.get(1);
    let total: Option<i64> = row.get(2);
    if count == max_rows && req.limit.is_none_or(|l| l > max_rows) {
        st.capped_reads.fetch_add(1, Ordering::SeqCst);
    }
    let shown_total = total.map_or_else(|| "*".to_owned(), |n| n.to_string());
    let range = if count == 0 { format!("*/{shown_total}") } else { format!("{offset}-{}/{shown_total}", offset + count - 1) };
    // PostgREST's rangeStatus: 416 past the end, 206 for a part, else 200.
    let status = match total {
        Some(total) if offset > total => {
            let resp = pgrst_error(
                416,
                "PGRST103",
                "Requested range not satisfiable",
                Some(&format!("An offset of {offset} was requested, but there are only {total} rows.")),
                None,
            );
            return abandon(st, client, resp).await;
        }
        Some(total) if count < total => 206,
        _ => 200,
    };
    let mut resp = response(status, JSON_CT, if head { String::new() } else { body });
    if let Ok(v) = HeaderValue::from_str(&range) {
        resp.headers_mut().insert(CONTENT_RANGE_LATER, v);
    }
    finish(st, client, ctx, resp).await
}

// ---------------------------------------------------------------------------
// SQL building: identifiers quoted, values as untyped text parameters
// ---------------------------------------------------------------------------

/// A bind parameter PostgreSQL receives as text with its type left for the
/// server to infer, like PostgREST's `unknown` encoder: the server parses
/// the text with the input function of the type it inferred from context.
#[derive(Debug)]
struct UnknownText(String);

impl ToSql for UnknownText {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// PostgREST truncates at NUL (PostgreSQL text can't hold it).
fn trim_nul(s: &str) -> &str {
    s.split('\0').next().unwrap_or("")
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", trim_nul(s).replace('"', "\"\""))
}

/// `{"a","b"}`, every element quoted and escaped, for `= ANY($n)`.
fn array_literal(values: &[String]) -> String {
    let elems: Vec<String> = values.iter().map(|v| format!("\"{}\"", trim_nul(v).replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", elems.join(","))
}

#[derive(Default)]
struct SqlBuilder {
    params: Vec<UnknownText>,
}

impl SqlBuilder {
    fn param(&mut self, value: &str) -> String {
        self.params.push(UnknownText(trim_nul(value).to_owned()));
        format!("${}", self.params.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
    }

    fn filter(&mut self, table: &str, f: &Filter) -> String {
        let col = format!("{table}.{}", quote_ident(&f.field));
        let expr = match &f.expr.op {
            Operation::Simple { sql, value, like } => {
                let value = if *like { value.replace('*', "%") } else { value.clone() };
                format!("{col} {sql} {}", self.param(&value))
            }
            Operation::In(values) => {
                format!("{col} = ANY ({})", self.param(&array_literal(values)))
            }
            Operation::Is(t) => format!("{col} IS {}", t.sql()),
        };
        if f.expr.negated { format!("NOT ({expr})") } else { expr }
    }

    fn logic(&mut self, table: &str, tree: &LogicTree) -> String {
        match tree {
            LogicTree::Stmnt(f) => self.filter(table, f),
            LogicTree::Expr { negated, and, children } => {
                let joiner = if *and { " AND " } else { " OR " };
                let parts: Vec<String> = children.iter().map(|c| self.logic(table, c)).collect();
                let expr = format!("({})", parts.join(joiner));
                if *negated { format!("NOT {expr}") } else { expr }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Query parameter grammar (PostgREST's QueryParams parsers, hand-written)
// ---------------------------------------------------------------------------

const FTS_OPS: [&str; 4] = ["fts", "plfts", "phfts", "wfts"];

fn simple_operator(op: &str) -> Option<(&'static str, bool)> {
    Some(match op {
        "eq" => ("=", false),
        "gt" => (">", false),
        "gte" => (">=", false),
        "lt" => ("<", false),
        "lte" => ("<=", false),
        "neq" => ("<>", false),
        "like" => ("LIKE", true),
        "ilike" => ("ILIKE", true),
        "match" => ("~", false),
        "imatch" => ("~*", false),
        "cs" => ("@>", false),
        "cd" => ("<@", false),
        "ov" => ("&&", false),
        "sl" => ("<<", false),
        "sr" => (">>", false),
        "nxr" => ("&<", false),
        "nxl" => ("&>", false),
        "adj" => ("-|-", false),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
enum Trilean {
    Null,
    Unknown,
    True,
    False,
}

impl Trilean {
    fn sql(self) -> &'static str {
        match self {
            Trilean::Null => "NULL",
            Trilean::Unknown => "UNKNOWN",
            Trilean::True => "TRUE",
            Trilean::False => "FALSE",
        }
    }
}

#[derive(Debug)]
enum Operation {
    Simple { sql: &'static str, value: String, like: bool },
    In(Vec<String>),
    Is(Trilean),
}

#[derive(Debug)]
struct OpExpr {
    negated: bool,
    op: Operation,
}

#[derive(Debug)]
struct Filter {
    field: String,
    expr: OpExpr,
}

#[derive(Debug)]
enum LogicTree {
    Stmnt(Filter),
    Expr { negated: bool, and: bool, children: Vec<LogicTree> },
}

#[derive(Debug)]
struct OrderTerm {
    field: String,
    desc: Option<bool>,
    nulls_first: Option<bool>,
}

#[derive(Debug)]
enum ParseFail {
    /// A syntax error at a character position (0-based).
    Syntax { pos: usize, details: String },
    /// Valid PostgREST syntax the stand-in does not implement.
    Unsupported(&'static str),
}

impl ParseFail {
    fn pos(&self) -> usize {
        match self {
            ParseFail::Syntax { pos, .. } => *pos,
            ParseFail::Unsupported(_) => usize::MAX,
        }
    }

    /// Parsec keeps the error that got furthest.
    fn furthest(self, other: ParseFail) -> ParseFail {
        if other.pos() > self.pos() { other } else { self }
    }

    /// The PGRST100 response: `"failed to parse <what> (<input>)" (line 1,
    /// column N)` with the parser's explanation as details.
    fn reject(self, what: &str, input: &str) -> Rejection {
        Box::new(self.into_response(what, input))
    }

    fn into_response(self, what: &str, input: &str) -> Response {
        match self {
            ParseFail::Unsupported(feature) => not_implemented(feature),
            ParseFail::Syntax { pos, details } => pgrst_error(
                400,
                "PGRST100",
                &format!("\"failed to parse {what} ({input})\" (line 1, column {})", pos + 1),
                Some(&details),
                None,
            ),
        }
    }
}

type PResult<T> = Result<T, ParseFail>;

struct Cursor {
    s: Vec<char>,
    pos: usize,
}

impl Cursor {
    fn new(s: &str) -> Cursor {
        Cursor { s: s.chars().collect(), pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.pos + n).copied()
    }

    fn eof(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn starts_with(&self, lit: &str) -> bool {
        let lit: Vec<char> = lit.chars().collect();
        self.s[self.pos.min(self.s.len())..].starts_with(&lit)
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.starts_with(lit) {
            self.pos += lit.chars().count();
            true
        } else {
            false
        }
    }

    fn rest(&mut self) -> String {
        let s: String = self.s[self.pos..].iter().collect();
        self.pos = self.s.len();
        s
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self, expecting: &str) -> ParseFail {
        let got = match self.peek() {
            Some(c) => format!("unexpected {c:?}"),
            None => "unexpected end of input".to_owned(),
        };
        ParseFail::Syntax { pos: self.pos, details: format!("{got} expecting {expecting}") }
    }

    fn expect(&mut self, c: char, expecting: &str) -> PResult<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expecting))
        }
    }
}

/// `"..."` with `\x` meaning a literal `x`.
fn quoted_value(c: &mut Cursor) -> PResult<String> {
    c.expect('"', "\"\\\"\"")?;
    let mut out = String::new();
    loop {
        match c.bump() {
            None => return Err(c.unexpected("\"\\\"\"")),
            Some('"') => return Ok(out),
            Some('\\') => match c.bump() {
                Some(x) => out.push(x),
                None => return Err(c.unexpected("any character")),
            },
            Some(x) => out.push(x),
        }
    }
}

/// A column name: double-quoted, or identifiers (letters, digits, `_`, `$`,
/// spaces; trimmed) joined by `-` (not `->`).
fn field_name(c: &mut Cursor) -> PResult<String> {
    if c.peek() == Some('"') {
        return quoted_value(c);
    }
    let mut parts: Vec<String> = Vec::new();
    loop {
        let start = c.pos;
        while matches!(c.peek(), Some(ch) if ch.is_alphanumeric() || matches!(ch, '_' | ' ' | '$')) {
            c.pos += 1;
        }
        if c.pos == start {
            return Err(c.unexpected("field name (* or [a..z0..9_$])"));
        }
        let ident: String = c.s[start..c.pos].iter().collect();
        parts.push(ident.trim().to_owned());
        if c.peek() == Some('-') && c.peek_at(1) != Some('>') {
            c.pos += 1;
            continue;
        }
        return Ok(parts.join("-"));
    }
}

/// `pField`: a field name with optional surrounding blanks; JSON paths are
/// not implemented.
fn field(c: &mut Cursor) -> PResult<String> {
    c.ws();
    let name = field_name(c)?;
    if c.starts_with("->") {
        return Err(ParseFail::Unsupported("JSON paths (->, ->>)"));
    }
    c.ws();
    Ok(name)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueCtx {
    /// `col=op.value`: the value is the rest of the string, verbatim.
    TopLevel,
    /// Inside `or=(...)`: quoted, `{...}`, or up to `,` / `)`.
    Logic,
}

fn op_expr(c: &mut Cursor, ctx: ValueCtx) -> PResult<OpExpr> {
    let save = c.pos;
    if c.eat("not.") {
        match operation(c, ctx) {
            Ok(op) => return Ok(OpExpr { negated: true, op }),
            Err(e @ ParseFail::Unsupported(_)) => return Err(e),
            Err(first) => {
                c.pos = save;
                return match operation(c, ctx) {
                    Ok(op) => Ok(OpExpr { negated: false, op }),
                    Err(second) => Err(first.furthest(second)),
                };
            }
        }
    }
    Ok(OpExpr { negated: false, op: operation(c, ctx)? })
}

fn operation(c: &mut Cursor, ctx: ValueCtx) -> PResult<Operation> {
    if c.eat("in.") {
        return list_value(c).map(Operation::In);
    }
    if c.eat("is.") {
        for (word, t) in [("null", Trilean::Null), ("unknown", Trilean::Unknown), ("true", Trilean::True), ("false", Trilean::False)] {
            let n = word.len();
            let candidate: String = c.s.iter().skip(c.pos).take(n).collect();
            if candidate.eq_ignore_ascii_case(word) {
                c.pos += n;
                return Ok(Operation::Is(t));
            }
        }
        return Err(c.unexpected("null or trilean value (unknown, true, false)"));
    }
    // Full-text search: `fts.`, `fts(lang).`
    let word: String = c.s[c.pos..].iter().take_while(|ch| **ch != '.' && **ch != '(').collect();
    if FTS_OPS.contains(&word.as_str()) {
        return Err(ParseFail::Unsupported("full-text search operators"));
    }
    let start = c.pos;
    let Some(dot) = c.s[start..].iter().position(|ch| *ch == '.') else {
        c.pos = c.s.len();
        return Err(c.unexpected("delimiter (.)"));
    };
    let op: String = c.s[start..start + dot].iter().collect();
    c.pos = start + dot + 1;
    let Some((sql, like)) = simple_operator(&op) else {
        if op.ends_with(')') && op.contains('(') {
            return Err(ParseFail::Unsupported("operator modifiers such as eq(any)"));
        }
        return Err(ParseFail::Syntax { pos: c.pos, details: format!("unknown single value operator {op}") });
    };
    let value = match ctx {
        ValueCtx::TopLevel => c.rest(),
        ValueCtx::Logic => logic_single_value(c),
    };
    Ok(Operation::Simple { sql, value, like })
}

/// A quoted value counts only when followed by `,`, `)` or the end.
fn try_quoted(c: &mut Cursor) -> Option<String> {
    if c.peek() != Some('"') {
        return None;
    }
    let save = c.pos;
    match quoted_value(c) {
        Ok(v) if matches!(c.peek(), None | Some(',' | ')')) => Some(v),
        _ => {
            c.pos = save;
            None
        }
    }
}

fn take_until_comma_or_paren(c: &mut Cursor) -> String {
    let start = c.pos;
    while !matches!(c.peek(), None | Some(',' | ')')) {
        c.pos += 1;
    }
    c.s[start..c.pos].iter().collect()
}

fn logic_single_value(c: &mut Cursor) -> String {
    if let Some(v) = try_quoted(c) {
        return v;
    }
    if c.peek() == Some('{') {
        let save = c.pos;
        c.pos += 1;
        while !matches!(c.peek(), None | Some('{' | '}')) {
            c.pos += 1;
        }
        if c.peek() == Some('}') {
            c.pos += 1;
            return c.s[save..c.pos].iter().collect();
        }
        c.pos = save;
    }
    take_until_comma_or_paren(c)
}

/// `(a,"b,c",d)`: no blanks skipped around commas, as in PostgREST.
fn list_value(c: &mut Cursor) -> PResult<Vec<String>> {
    c.ws();
    c.expect('(', "\"(\"")?;
    c.ws();
    let mut values = Vec::new();
    loop {
        let v = match try_quoted(c) {
            Some(v) => v,
            None => take_until_comma_or_paren(c),
        };
        values.push(v);
        if c.peek() == Some(',') {
            c.pos += 1;
            continue;
        }
        break;
    }
    c.ws();
    c.expect(')', "\")\"")?;
    c.ws();
    Ok(values)
}

fn logic_tree(c: &mut Cursor, depth: usize) -> PResult<LogicTree> {
    if depth > 64 {
        return Err(ParseFail::Syntax { pos: c.pos, details: "logic tree nested too deeply".to_owned() });
    }
    let save = c.pos;
    let filter_fail = match logic_filter(c) {
        Ok(f) => return Ok(LogicTree::Stmnt(f)),
        Err(e @ ParseFail::Unsupported(_)) => return Err(e),
        Err(e) => e,
    };
    c.pos = save;
    let negated = c.eat("not.");
    let and = if c.eat("and") {
        true
    } else if c.eat("or") {
        false
    } else {
        let expecting = if negated {
            "logic operator (and, or)"
        } else {
            "field name (* or [a..z0..9_$]), negation operator (not) or logic operator (and, or)"
        };
        return Err(filter_fail.furthest(c.unexpected(expecting)));
    };
    c.ws();
    if c.peek() != Some('(') {
        return Err(filter_fail.furthest(c.unexpected("\"(\"")));
    }
    c.pos += 1;
    c.ws();
    let mut children = Vec::new();
    loop {
        children.push(logic_tree(c, depth + 1)?);
        c.ws();
        if c.peek() == Some(',') {
            c.pos += 1;
            c.ws();
            continue;
        }
        break;
    }
    c.expect(')', "\",\" or \")\"")?;
    c.ws();
    Ok(LogicTree::Expr { negated, and, children })
}

fn logic_filter(c: &mut Cursor) -> PResult<Filter> {
    let field = field(c)?;
    c.expect('.', "delimiter (.)")?;
    let expr = op_expr(c, ValueCtx::Logic)?;
    Ok(Filter { field, expr })
}

/// `or=(...)` is parsed as `or(...)`, like PostgREST does; trailing input
/// after the tree is ignored (as Parsec without `eof` does).
fn parse_logic_param(op: &str, v: &str) -> Result<LogicTree, Rejection> {
    let mut c = Cursor::new(&format!("{op}{v}"));
    logic_tree(&mut c, 0).map_err(|e| e.reject("logic tree", v))
}

fn parse_filter_param(k: &str, v: &str) -> Result<Filter, Rejection> {
    let mut kc = Cursor::new(k);
    let field = field_name(&mut kc).map_err(|e| e.reject("tree path", k))?;
    if kc.peek() == Some('.') {
        return Err(Box::new(not_implemented("filters on embedded resources (a.b=...)")));
    }
    if kc.starts_with("->") {
        return Err(Box::new(not_implemented("JSON paths (->, ->>)")));
    }
    let mut vc = Cursor::new(v);
    let expr = op_expr(&mut vc, ValueCtx::TopLevel).map_err(|e| e.reject("filter", v))?;
    Ok(Filter { field, expr })
}

fn parse_order(v: &str) -> Result<Vec<OrderTerm>, Rejection> {
    let mut c = Cursor::new(v);
    let mut terms = Vec::new();
    let result: PResult<()> = (|| {
        loop {
            c.ws();
            let field = field(&mut c)?;
            if c.peek() == Some('(') {
                return Err(ParseFail::Unsupported("ordering by embedded resources"));
            }
            let desc = if c.eat(".asc") {
                Some(false)
            } else if c.eat(".desc") {
                Some(true)
            } else {
                None
            };
            let nulls_first = if c.eat(".nullsfirst") {
                Some(true)
            } else if c.eat(".nullslast") {
                Some(false)
            } else {
                None
            };
            c.ws();
            if !(c.eof() || c.peek() == Some(',')) {
                let expecting = if c.peek() == Some('.') && desc.is_none() {
                    "\"asc\", \"desc\", \"nullsfirst\" or \"nullslast\""
                } else {
                    "delimiter (.), \",\" or end of input"
                };
                return Err(c.unexpected(expecting));
            }
            terms.push(OrderTerm { field, desc, nulls_first });
            if c.eat(",") {
                continue;
            }
            return Ok(());
        }
    })();
    result.map_err(|e| e.reject("order", v))?;
    Ok(terms)
}

/// `*` or a plain column list; everything else PostgREST's select can do
/// (aliases, casts, embeds, JSON paths, aggregates) is not implemented.
fn parse_select(v: &str) -> Result<Vec<SelectItem>, Rejection> {
    let mut c = Cursor::new(v);
    let mut cols = Vec::new();
    let result: PResult<()> = (|| {
        loop {
            c.ws();
            if c.eat("*") {
                cols.push(SelectItem { column: "*".to_owned(), cast: None });
            } else {
                let column = field_name(&mut c)?;
                // `pFieldCast`: `::` and a type name of letters, digits, `_` and blanks
                let cast = if c.eat("::") {
                    let start = c.pos;
                    while matches!(c.peek(), Some(ch) if ch.is_alphanumeric() || matches!(ch, '_' | ' ')) {
                        c.pos += 1;
                    }
                    if c.pos == start {
                        return Err(c.unexpected("a type name after ::"));
                    }
                    Some(c.s[start..c.pos].iter().collect::<String>().trim().to_owned())
                } else {
                    None
                };
                cols.push(SelectItem { column, cast });
            }
            c.ws();
            match c.peek() {
                None => return Ok(()),
                Some(',') => {
                    c.pos += 1;
                }
                Some(_) => {
                    return Err(ParseFail::Unsupported("select beyond `*`, column names and casts (aliases, embeds, JSON paths)"));
                }
            }
        }
    })();
    result.map_err(|e| e.reject("select parameter", v))?;
    Ok(cols)
}

// ---------------------------------------------------------------------------
// POST /rest/v1/rpc/<fn>
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Routine {
    in_names: Vec<String>,
    in_types: Vec<String>,
    n_defaults: usize,
    returns_set: bool,
    returns_void: bool,
    returns_composite: bool,
}

impl Routine {
    fn single_unnamed_json(&self) -> Option<&str> {
        match (self.in_names.as_slice(), self.in_types.as_slice()) {
            ([name], [ty]) if name.is_empty() && (ty == "json" || ty == "jsonb") => Some(ty),
            _ => None,
        }
    }

    fn matches_named(&self, keys: &BTreeSet<String>) -> bool {
        if self.in_names.iter().any(|n| n.is_empty()) {
            return false;
        }
        let required = self.in_names.len().saturating_sub(self.n_defaults);
        keys.iter().all(|k| self.in_names.contains(k)) && self.in_names[..required].iter().all(|n| keys.contains(n))
    }

    fn signature(&self) -> String {
        let args: Vec<String> = self.in_names.iter().zip(&self.in_types).map(|(n, t)| format!("{n} => {t}")).collect();
        args.join(", ")
    }
}

const ROUTINES_SQL: &str = "
SELECT
  CASE WHEN p.proargmodes IS NULL
       THEN coalesce(p.proargnames[1:p.pronargs], array_fill(''::text, ARRAY[p.pronargs]))
       ELSE ARRAY(SELECT coalesce(a.name, '')
                    FROM unnest(p.proargnames, p.proargmodes::text[]) WITH ORDINALITY AS a(name, mode, n)
                   WHERE a.mode IN ('i', 'b', 'v') ORDER BY a.n)
  END::text[] AS in_names,
  ARRAY(SELECT pg_catalog.format_type(t.typ, NULL)
          FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS t(typ, n) ORDER BY t.n)::text[] AS in_types,
  p.pronargdefaults::int4,
  p.proretset,
  p.prorettype = 'pg_catalog.void'::regtype,
  rt.typtype = 'c'
    OR (p.prorettype = 'pg_catalog.record'::regtype
        AND coalesce('o' = ANY(p.proargmodes::text[]) OR 't' = ANY(p.proargmodes::text[]), false))
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_type rt ON rt.oid = p.prorettype
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $2 AND p.proname = $1 AND p.prokind = 'f'
ORDER BY p.oid";

/// Keeps the answer's body when [`PostgrestStandIn::log_responses`] is on.
async fn keep_response(st: &Shared, path: &str, resp: Response) -> Response {
    if !st.log_responses.load(Ordering::SeqCst) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    lock(&st.responses).push((path.to_owned(), String::from_utf8_lossy(&bytes).into_owned()));
    Response::from_parts(parts, Body::from(bytes))
}

async fn call_rpc(st: &Shared, ctx: &RequestCtx, func: &str, body: &[u8]) -> Response {
    let schema = ctx.schema.as_str();
    let body_text = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_owned()
    } else {
        match std::str::from_utf8(body) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                return pgrst_error(400, "PGRST102", "Empty or invalid json", None, None);
            }
        }
    };
    let payload: Value = match serde_json::from_str(&body_text) {
        Ok(v) => v,
        Err(_) => return pgrst_error(400, "PGRST102", "Empty or invalid json", None, None),
    };
    let keys: Option<BTreeSet<String>> = payload.as_object().map(|o| o.keys().cloned().collect());

    let client = match st.pool.get().await {
        Ok(c) => c,
        Err(e) => return connection_error_response(&e),
    };
    if let Err(e) = begin(&client, ctx).await {
        return fail(st, client, &e).await;
    }
    let routines = match client.query(ROUTINES_SQL, &[&func, &schema]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| Routine {
                in_names: r.get(0),
                in_types: r.get(1),
                n_defaults: r.get::<_, i32>(2).max(0) as usize,
                returns_set: r.get(3),
                returns_void: r.get(4),
                returns_composite: r.get(5),
            })
            .collect::<Vec<_>>(),
        Err(e) => return fail(st, client, &e).await,
    };

    let named: Vec<&Routine> = match &keys {
        Some(keys) => routines.iter().filter(|r| r.matches_named(keys)).collect(),
        None => Vec::new(),
    };
    let chosen: Result<(&Routine, Option<&str>), Response> = if named.len() == 1 {
        Ok((named[0], None))
    } else if named.len() > 1 {
        let candidates: Vec<String> = named.iter().map(|r| format!("{schema}.{func}({})", r.signature())).collect();
        Err(pgrst_error(
            300,
            "PGRST203",
            &format!("Could not choose the best candidate function between: {}", candidates.join(", ")),
            None,
            Some("Try renaming the parameters or the function itself in the database so function overloading can be resolved"),
        ))
    } else if let Some((r, ty)) = routines.iter().find_map(|r| r.single_unnamed_json().map(|ty| (r, ty))) {
        Ok((r, Some(ty)))
    } else if let Some(keys) = &keys {
        Err(no_rpc_error(schema, func, keys, &routines))
    } else {
        Err(not_implemented("RPC with a non-object JSON body (bulk calls)"))
    };
    let (routine, single_json) = match chosen {
        Ok(c) => c,
        Err(resp) => return abandon(st, client, resp).await,
    };

    let max_rows = st.max_rows.load(Ordering::SeqCst);
    let fn_ident = format!("{}.{}", quote_ident(schema), quote_ident(func));
    let mut params = SqlBuilder::default();
    let (call, from_args) = if let Some(ty) = single_json {
        let p = params.param(&body_text);
        (format!("{fn_ident}({p}::{ty})"), String::new())
    } else {
        let keys = keys.as_ref().expect("named call has an object body");
        if keys.is_empty() {
            (format!("{fn_ident}()"), String::new())
        } else {
            let p = params.param(&body_text);
            let mut args = Vec::new();
            let mut cols = Vec::new();
            for (name, ty) in routine.in_names.iter().zip(&routine.in_types) {
                if keys.contains(name) {
                    let q = quote_ident(name);
                    args.push(format!("{q} := _x.{q}"));
                    cols.push(format!("{q} {ty}"));
                }
            }
            (format!("{fn_ident}({})", args.join(", ")), format!("json_to_record({p}::json) AS _x({})", cols.join(", ")))
        }
    };
    let from_args_clause = if from_args.is_empty() { String::new() } else { format!(" FROM {from_args}") };
    let sql = if routine.returns_void {
        format!("SELECT {call}{from_args_clause}")
    } else if routine.returns_composite {
        let from = if from_args.is_empty() { format!("{call} AS _r") } else { format!("{from_args}, {call} AS _r") };
        if routine.returns_set {
            format!(
                "SELECT coalesce(json_agg(_postgrest_t), '[]')::text \
                 FROM (SELECT _r.* FROM {from} LIMIT {max_rows}) _postgrest_t"
            )
        } else {
            format!(
                "SELECT coalesce(json_agg(_postgrest_t)->0, 'null')::text \
                 FROM (SELECT _r.* FROM {from}) _postgrest_t"
            )
        }
    } else if routine.returns_set {
        format!(
            "SELECT coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')::text \
             FROM (SELECT {call} AS pgrst_scalar{from_args_clause} LIMIT {max_rows}) _postgrest_t"
        )
    } else {
        format!(
            "SELECT coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null')::text \
             FROM (SELECT {call} AS pgrst_scalar{from_args_clause}) _postgrest_t"
        )
    };

    let rows = match client.query(&sql, &params.refs()).await {
        Ok(rows) => rows,
        Err(e) => return fail(st, client, &e).await,
    };
    if routine.returns_void {
        let mut resp = response(204, JSON_CT, "");
        resp.headers_mut().remove(header::CONTENT_TYPE);
        return finish(st, client, ctx, resp).await;
    }
    let body: String = rows.first().map(|r| r.get(0)).unwrap_or_else(|| "null".to_owned());
    finish(st, client, ctx, response(200, JSON_CT, body)).await
}

/// PGRST202, worded like PostgREST for a JSON body.
fn no_rpc_error(schema: &str, func: &str, keys: &BTreeSet<String>, routines: &[Routine]) -> Response {
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let listed = keys.join(", ");
    let message = if keys.is_empty() {
        format!("Could not find the function {schema}.{func} without parameters in the schema cache")
    } else {
        format!("Could not find the function {schema}.{func}({listed}) in the schema cache")
    };
    let searched = if keys.is_empty() {
        " without parameters".to_owned()
    } else if keys.len() == 1 {
        format!(" with parameter {listed}")
    } else {
        format!(" with parameters {listed}")
    };
    let details = format!(
        "Searched for the function {schema}.{func}{searched} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."
    );
    // With overloads of that name, PostgREST suggests the closest parameter
    // list; here: the one sharing the most names with the request.
    let hint = routines.iter().max_by_key(|r| r.in_names.iter().filter(|n| keys.contains(&n.as_str())).count()).map(|r| {
        let mut names: Vec<&str> = r.in_names.iter().map(String::as_str).collect();
        names.sort_unstable();
        format!("Perhaps you meant to call the function {schema}.{func}({})", names.join(", "))
    });
    pgrst_error(404, "PGRST202", &message, Some(&details), hint.as_deref())
}

//! Security properties a clinic relies on without thinking about them:
//!
//! - the service key never travels in clear text: REST URLs must be
//!   `https://` unless the host is loopback;
//! - certificate checks stay on: a server with a self-signed certificate (or
//!   one that does not speak TLS at all) is an error, never a success;
//! - secrets (service key, local password, the `db_url` password, a webhook
//!   URL holding a token) never reach the log, the log file, `status`,
//!   `doctor`, the control tables or an alert body, including on failures;
//! - the config file warns when other users can read it;
//! - the upstream functions, which run as their owner, reach only the tables
//!   the project syncs: not `auth.users`, not an unlisted table;
//! - SQL text built with `format!` only splices identifiers through the
//!   quoting helpers (a source-level check, see the last test).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::postgrest::PostgrestStandIn;
use support::sync::{Mode, Pair, binary, count, kill9, terminate};
use support::{Cluster, StopMode, TestDb, free_port, wait_for};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config for `status`-style commands whose local database is unreachable
/// (they fail after loading the config, with exit 1, not 2).
fn config_with(supabase: &str) -> String {
    format!(
        r#"[supabase]
{supabase}

[local_postgres]
host = "127.0.0.1"
port = {port}
database = "centrovision"
user = "centrovision_sync"
password = "pw"
"#,
        port = free_port()
    )
}

fn run_config(text: &str, mode: u32, args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    Command::new(binary())
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("CENTROVISION_SYNC_SERVICE_KEY")
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------
// https only, except loopback
// ---------------------------------------------------------------------------

#[test]
fn a_plain_http_rest_url_is_refused_unless_the_host_is_loopback() {
    for url in ["http://example.com", "http://myproject.supabase.co", "http://localhost.example.com:8080", "http://10.0.0.5:3000"] {
        let o = run_config(&config_with(&format!("url = \"{url}\"\nservice_key = \"k\"")), 0o600, &["status"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{url} must be refused as bad configuration:\n{err}");
        assert!(err.contains("[supabase] url") && err.contains("https://"), "{url}: the message should ask for https://:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = run_config(&config_with("url = \"ftp://example.com\"\nservice_key = \"k\""), 0o600, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Postgres mode with a REST url too: same rule.
    let o = run_config(
        &config_with("mode = \"postgres\"\ndb_url = \"host=127.0.0.1 dbname=x\"\nurl = \"http://example.com\""),
        0o600,
        &["status"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Loopback (any spelling) and https are accepted: the command gets past
    // the config and fails later, on the unreachable local database.
    for url in ["http://127.0.0.1:54321", "http://localhost:54321", "http://[::1]:54321", "http://127.0.0.2:1", "https://example.com"] {
        let o = run_config(&config_with(&format!("url = \"{url}\"\nservice_key = \"k\"")), 0o600, &["status"]);
        assert_eq!(o.status.code(), Some(1), "{url} must be accepted:\n{}", stderr(&o));
        assert!(stderr(&o).contains("local database"), "{url}: {}", stderr(&o));
    }
}

// ---------------------------------------------------------------------------
// Certificate checks stay on
// ---------------------------------------------------------------------------

/// `openssl s_server` with a fresh self-signed certificate for 127.0.0.1,
/// answering HTTP (`-www`); killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

async fn self_signed_tls_server() -> Option<TlsServer> {
    let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].into_iter().find(|p| Path::new(p).exists())?;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl req: {}", stderr(&made));
    let port = free_port();
    let child = Command::new(openssl)
        .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = TlsServer { child, port, _dir: dir };
    wait_for("openssl s_server listening", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
    Some(server)
}

/// Points a REST pair at `url` and runs `once` with a journaled change.
async fn once_against(pair: &mut Pair, url: &str) -> Output {
    let config = std::fs::read_to_string(pair.config_path()).unwrap();
    let config = config.replace(&pair.standin().url(), url);
    std::fs::write(pair.config_path(), config).unwrap();
    pair.exec(&["once"], &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_refused() {
    let Some(server) = self_signed_tls_server().await else {
        eprintln!("SKIPPED: no openssl binary to serve a self-signed certificate");
        return;
    };
    let url = format!("https://127.0.0.1:{}", server.port);
    // Control: the server does answer HTTPS when certificates are not checked,
    // so the only thing between the service and success is verification.
    // (Best effort: reqwest's own "accept invalid certs" switch is not
    // available with every rustls verifier; the TCP listener is checked by
    // the server helper itself.)
    if let Ok(insecure) = reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build()
        && let Ok(page) = insecure.get(&url).send().await
    {
        assert!(page.status().is_success());
    }

    let mut pair = Pair::new("tls_self_signed", Mode::Rest).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('must not leave unverified')").await.unwrap();
    let o = once_against(&mut pair, &url).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "the error should say the certificate was not trusted:\n{err}");
    assert!(!err.contains("not JSON") && !err.contains("HTTP 200"), "the client talked to the untrusted server:\n{err}");
    // `run` keeps refusing too; capture journals the change, it is not sent.
    let mut child = pair.spawn_run(&[]);
    wait_for("a certificate error in the run log", Duration::from_secs(30), || async {
        pair.run_log().to_lowercase().contains("certificate").then_some(())
    })
    .await;
    let c = pair.local.journal().connect().await;
    wait_for("the change journaled", Duration::from_secs(30), || async {
        let n: i64 = c.query_one("SELECT count(*) FROM _sync_pending", &[]).await.unwrap().get(0);
        (n == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a few more refused attempts
    kill9(&mut child);
    let synced: i64 = c.query_one("SELECT count(*) FROM _sync_pending WHERE synced", &[]).await.unwrap().get(0);
    assert_eq!(synced, 0);
    assert_eq!(pair.standin().requests("/rest/v1/"), 0, "nothing went to the real upstream either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_speak_tls_is_an_error_not_a_success() {
    // Answers every connection with a plain-text HTTP response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n1").await;
            });
        }
    });
    let mut pair = Pair::new("tls_garbage", Mode::Rest).await;
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('x')").await.unwrap();
    let o = once_against(&mut pair, &format!("https://127.0.0.1:{port}")).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("could not connect") || err.contains("connection failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let synced: i64 =
        pair.local.journal().connect().await.query_one("SELECT count(*) FROM _sync_pending WHERE synced", &[]).await.unwrap().get(0);
    assert_eq!(synced, 0);
    assert_eq!(pair.standin().requests("/rest/v1/"), 0);
}

// ---------------------------------------------------------------------------
// Secrets never leak
// ---------------------------------------------------------------------------

/// A webhook receiver that records every body; answers 500 to the first
/// call (so the "webhook answered with an error" path runs too).
async fn webhook() -> (u16, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let g = g.clone();
        async move {
            let mut v = g.lock().unwrap();
            v.push(body);
            if v.len() == 1 { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::OK }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, got)
}

struct Secrets {
    service_key: String,
    wrong_key: String,
    local_pw: String,
    wrong_local_pw: String,
    db_pw: String,
    wrong_db_pw: String,
    hook_path_token: String,
    hook_query_token: String,
}

impl Secrets {
    fn new(tag: &str) -> Secrets {
        let r: u64 = rand::random();
        Secrets {
            // JWT-shaped, so it also travels as a Bearer token.
            service_key: format!("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.SvcKeySig{tag}{r:x}"),
            wrong_key: format!("sb_secret_WrongKey{tag}{r:x}"),
            local_pw: format!("LocalPwS3cr3t{tag}{r:x}"),
            wrong_local_pw: format!("WrongLocalPwS3cr3t{tag}{r:x}"),
            db_pw: format!("DbUrlPwS3cr3t{tag}{r:x}"),
            wrong_db_pw: format!("WrongDbUrlPwS3cr3t{tag}{r:x}"),
            hook_path_token: format!("HookPathTok{tag}{r:x}"),
            hook_query_token: format!("HookQueryTok{tag}{r:x}"),
        }
    }
    fn all(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("service key", &self.service_key),
            ("the JWT signature of the service key", self.service_key.rsplit('.').next().unwrap()),
            ("wrong service key", &self.wrong_key),
            ("local password", &self.local_pw),
            ("wrong local password", &self.wrong_local_pw),
            ("db_url password", &self.db_pw),
            ("wrong db_url password", &self.wrong_db_pw),
            ("webhook path token", &self.hook_path_token),
            ("webhook query token", &self.hook_query_token),
        ]
    }
}

fn set_line(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} = ")) {
                found = true;
                format!("{key} = {value:?}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no {key} line in the config");
    std::fs::write(config, out.join("\n") + "\n").unwrap();
}

/// Where a secret could end up, by name.
async fn gather_outputs(
    pair: &Pair,
    log_dir: &Path,
    hook: &Arc<Mutex<Vec<String>>>,
    extra: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut out = extra;
    out.push(("run log (console)".into(), pair.run_log()));
    for e in std::fs::read_dir(log_dir).unwrap() {
        let p = e.unwrap().path();
        out.push((format!("log file {}", p.display()), std::fs::read_to_string(&p).unwrap_or_default()));
    }
    for args in [&["status"][..], &["status", "--json"], &["doctor"]] {
        let o = pair.exec(args, &[]).await;
        out.push((format!("`{}` stdout", args.join(" ")), String::from_utf8_lossy(&o.stdout).into_owned()));
        out.push((format!("`{}` stderr", args.join(" ")), stderr(&o)));
    }
    let c = pair.local.connect().await;
    let j = pair.local.journal().connect().await;
    for (what, sql, db) in [
        ("_sync_log", "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM _sync_log t", &c),
        ("_sync_pending.error", "SELECT coalesce(string_agg(error, E'\\n'), '') FROM _sync_pending", &j),
        ("_sync_metadata", "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM _sync_metadata t", &c),
        ("_sync_state", "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM _sync_state t", &c),
        ("_sync_capture", "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM _sync_capture t", &j),
    ] {
        out.push((what.into(), db.query_one(sql, &[]).await.unwrap().get(0)));
    }
    for (i, body) in hook.lock().unwrap().iter().enumerate() {
        out.push((format!("webhook body {i}"), body.clone()));
    }
    out
}

/// A full `run` with distinctive secrets through its bad days: a wrong
/// upstream credential, upstream down, alerts (the first webhook call
/// failing), a wrong local password; then every place a secret could land
/// is searched for every secret.
async fn secrets_never_reach_logs_status_or_control_tables(mode: Mode) {
    let s = Secrets::new(match mode {
        Mode::Postgres => "Pg",
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => "Rest",
    });
    let tag = format!("{}_{}", std::process::id(), rand::random::<u32>());
    // Local: a role with a distinctive password (the shared cluster's own
    // password is random but not ours to choose).
    let local_role = format!("cv_sec_local_{tag}");
    Cluster::shared()
        .connect("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {local_role} LOGIN SUPERUSER PASSWORD '{}'", s.local_pw))
        .await
        .unwrap();
    let local = Cluster::shared().create_database("secrets_l").await.with_credentials(&local_role, &s.local_pw);
    // Upstream on its own cluster (it goes down mid-test), reached with a
    // distinctive db_url password.
    let up_cluster = Cluster::start(Default::default());
    let up_role = format!("cv_sec_up_{tag}");
    up_cluster
        .connect("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {up_role} LOGIN SUPERUSER PASSWORD '{}'", s.db_pw))
        .await
        .unwrap();
    let upstream: TestDb = up_cluster.create_database("secrets_u").await.with_credentials(&up_role, &s.db_pw);
    let mut pair = Pair::on(local, upstream, mode).await;
    if mode.is_rest() {
        pair.rest = Some(PostgrestStandIn::start(&pair.upstream, &s.service_key).await);
        pair.service_key = s.service_key.clone();
    }
    let (hook_port, hook) = webhook().await;
    let log_dir = pair.dir.path().join("logs");
    pair.sections = format!(
        "[alerts]\nwebhook_url = \"http://127.0.0.1:{hook_port}/hook/{}?token={}\"\nconsecutive_errors = 1\nmax_backlog_rows = 5\n\n\
         [logging]\nlevel = \"debug\"\nfile = {:?}\n",
        s.hook_path_token,
        s.hook_query_token,
        log_dir.join("sync.log").display().to_string()
    );
    pair.write_config();
    if mode.is_rest() {
        // Also present in REST mode (unused there): must not be printed either.
        let text = std::fs::read_to_string(pair.config_path())
            .unwrap()
            .replace("[supabase]\n", &format!("[supabase]\ndb_url = \"host=127.0.0.1 port=1 user=u password={} dbname=d\"\n", s.db_pw));
        std::fs::write(pair.config_path(), text).unwrap();
    }
    pair.init().await;
    let mut extra: Vec<(String, String)> = Vec::new();
    let local_c = pair.local.connect().await;

    // 1. A normal run.
    let mut child = pair.spawn_run(&[]);
    local_c.batch_execute("INSERT INTO services (name) SELECT 'ok ' || g FROM generate_series(1, 3) g").await.unwrap();
    pair.wait_converged(Duration::from_secs(60)).await;
    kill9(&mut child);

    // 2. A wrong upstream credential: rejected, alerted.
    let config = pair.config_path().to_path_buf();
    match mode {
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => set_line(&config, "service_key", &s.wrong_key),
        Mode::Postgres => {
            let text = std::fs::read_to_string(&config).unwrap().replace(&s.db_pw, &s.wrong_db_pw);
            std::fs::write(&config, text).unwrap();
        }
    }
    let o = pair.exec(&["once"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "a wrong credential must fail `once`: {}", stderr(&o));
    extra.push(("`once` with a wrong upstream credential, stderr".into(), stderr(&o)));
    extra.push(("`once` with a wrong upstream credential, stdout".into(), String::from_utf8_lossy(&o.stdout).into_owned()));
    let mut child = pair.spawn_run(&[]);
    local_c.batch_execute("INSERT INTO services (name) VALUES ('waits for the right key')").await.unwrap();
    wait_for("an alert about the rejected credential", Duration::from_secs(60), || async {
        hook.lock().unwrap().iter().any(|b| b.contains("upstream_rejected") || b.contains("_failing")).then_some(())
    })
    .await;
    kill9(&mut child);
    match mode {
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => set_line(&config, "service_key", &s.service_key),
        Mode::Postgres => {
            let text = std::fs::read_to_string(&config).unwrap().replace(&s.wrong_db_pw, &s.db_pw);
            std::fs::write(&config, text).unwrap();
        }
    }

    // 3. Upstream down: offline, backlog alert, then back and drained.
    let mut child = pair.spawn_run(&[]);
    up_cluster.stop(StopMode::Fast);
    local_c.batch_execute("INSERT INTO services (name) SELECT 'offline ' || g FROM generate_series(1, 10) g").await.unwrap();
    wait_for("the backlog alert", Duration::from_secs(60), || async {
        hook.lock().unwrap().iter().any(|b| b.contains("\"backlog\"")).then_some(())
    })
    .await;
    up_cluster.start_again();
    pair.wait_converged(Duration::from_secs(120)).await;
    terminate(&mut child);

    // 4. A wrong local password: `run` refuses to start.
    set_line(&config, "password", &s.wrong_local_pw);
    let o = pair.exec(&["run"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("password"), "{}", stderr(&o));
    extra.push(("`run` with a wrong local password, stderr".into(), stderr(&o)));
    extra.push(("`run` with a wrong local password, stdout".into(), String::from_utf8_lossy(&o.stdout).into_owned()));
    for args in [&["status"][..], &["doctor"]] {
        let o = pair.exec(args, &[]).await;
        extra.push((
            format!("`{}` with a wrong local password", args.join(" ")),
            format!("{}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
        ));
    }
    set_line(&config, "password", &s.local_pw);

    // The test saw what it meant to see.
    let log = pair.run_log();
    assert!(log.contains("ALERT"), "no alert was logged");
    assert!(log.contains("upstream offline"), "the outage was not logged");
    // The webhook fails its first call, made by `once` (step 2) or by `run`,
    // whichever alerted first; both outputs are searched below.
    let failed_call = |text: &str| text.contains("alert webhook answered with an error");
    assert!(failed_call(&log) || extra.iter().any(|(_, text)| failed_call(text)), "the failing webhook call was not exercised");
    assert!(hook.lock().unwrap().len() >= 2, "webhook calls: {:?}", hook.lock().unwrap());

    let outputs = gather_outputs(&pair, &log_dir, &hook, extra).await;
    let mut leaks = Vec::new();
    for (place, text) in &outputs {
        for (what, secret) in s.all() {
            if text.contains(secret) {
                let at = text.find(secret).unwrap();
                let from = text[..at].char_indices().rev().nth(80).map_or(0, |(i, _)| i);
                leaks.push(format!("{what} in {place}: …{}…", &text[from..(at + secret.len()).min(text.len())]));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    assert!(outputs.iter().map(|(_, t)| t.len()).sum::<usize>() > 10_000, "suspiciously little output searched");
}

mod secrets_never_reach_logs_status_or_control_tables {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::secrets_never_reach_logs_status_or_control_tables(crate::support::sync::Mode::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rest() {
        super::secrets_never_reach_logs_status_or_control_tables(crate::support::sync::Mode::Rest).await
    }
}

/// Row values are patient data: even with `RUST_LOG=debug` (which the kit
/// sets for every command) none reaches the log — the database driver's
/// debug lines carry every statement's parameters, so it stays at `info`.
async fn row_values_never_reach_the_log_even_at_debug_level(mode: Mode) {
    let pair = Pair::new("rowvalues_log", mode).await;
    pair.init().await;
    let marker = format!("Paciente Marcador {}", rand::random::<u32>());
    let c = pair.local.connect().await;
    c.execute("INSERT INTO patients (full_name, notes) VALUES ($1, $1)", &[&marker]).await.unwrap();
    pair.upstream
        .connect()
        .await
        .execute(&format!("INSERT INTO {}.services (name) VALUES ($1)", pair.upstream_schema), &[&format!("{marker} servicio")])
        .await
        .unwrap();
    let o = pair.once().await;
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(err.contains("DEBUG"), "the command did not log at debug level: {err}");
    assert_eq!(count(&pair.upstream, &format!("SELECT count(*) FROM {}.patients", pair.upstream_schema)).await, 1, "pushed");
    for (what, text) in [("stdout", &out[..]), ("stderr", &err[..])] {
        assert!(!text.contains(&marker), "a row value reached {what} at debug level:\n{text}");
    }
}

crate::both_modes!(row_values_never_reach_the_log_even_at_debug_level);

// ---------------------------------------------------------------------------
// Config file permissions
// ---------------------------------------------------------------------------

#[test]
fn a_config_readable_by_others_is_warned_about_and_a_private_one_is_not() {
    let text = config_with("url = \"https://example.supabase.co\"\nservice_key = \"k\"");
    for mode in [0o644, 0o640, 0o604] {
        let o = run_config(&text, mode, &["status"]);
        let err = stderr(&o);
        assert!(err.contains("chmod 600"), "mode {mode:o}: expected a warning naming chmod 600:\n{err}");
        assert!(err.contains("readable by other users"), "mode {mode:o}:\n{err}");
    }
    let o = run_config(&text, 0o600, &["status"]);
    let err = stderr(&o);
    assert!(!err.contains("chmod") && !err.contains("readable by other"), "mode 600 must not warn:\n{err}");
    // The warning reaches the log file of `run`/`once` too, not only the console.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let with_file = format!("{text}\n[logging]\nfile = {:?}\n", log.display().to_string());
    let _ = run_config(&with_file, 0o644, &["once"]);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("chmod 600"), "the log file should carry the warning:\n{logged}");
}

// ---------------------------------------------------------------------------
// Identifiers in SQL text go through the quoting helpers
// ---------------------------------------------------------------------------

/// A `format!` call: where it is, its format string (as written), its
/// arguments (as written).
struct FormatSite {
    offset: usize,
    literal: String,
    args: Vec<String>,
}

/// Skips a string or char literal starting at `i` (which is `"`, `r`, `b`
/// or `'`); returns the index just past it, or None if `i` does not start one.
fn skip_literal(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if s[j] == b'b' {
        j += 1;
    }
    if j < s.len() && s[j] == b'r' {
        let mut k = j + 1;
        let mut hashes = 0;
        while k < s.len() && s[k] == b'#' {
            hashes += 1;
            k += 1;
        }
        if k < s.len() && s[k] == b'"' {
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let end = s[k + 1..].windows(close.len()).position(|w| w == close.as_slice())?;
            return Some(k + 1 + end + close.len());
        }
        return None;
    }
    if j < s.len() && s[j] == b'"' {
        let mut k = j + 1;
        while k < s.len() {
            match s[k] {
                b'\\' => k += 2,
                b'"' => return Some(k + 1),
                _ => k += 1,
            }
        }
        return None;
    }
    if s[i] == b'\'' {
        // A char literal ('x', '\n', '\'', '"') or a lifetime ('a).
        if i + 2 < s.len() && s[i + 1] == b'\\' {
            let end = s[i + 2..].iter().position(|&c| c == b'\'')?;
            return Some(i + 2 + end + 1);
        }
        let ch_len = std::str::from_utf8(&s[i + 1..(i + 5).min(s.len())]).map(|t| t.chars().next().map_or(1, char::len_utf8)).unwrap_or(1);
        if i + 1 + ch_len < s.len() && s[i + 1 + ch_len] == b'\'' {
            return Some(i + 2 + ch_len);
        }
        return Some(i + 1); // a lifetime
    }
    None
}

/// The text of a string literal's contents (raw: escapes as written).
fn literal_body(lit: &str) -> &str {
    let t = lit.trim_start_matches('b');
    if let Some(r) = t.strip_prefix('r') {
        let hashes = r.len() - r.trim_start_matches('#').len();
        &r[hashes + 1..r.len() - 1 - hashes]
    } else {
        &t[1..t.len() - 1]
    }
}

fn format_sites(src: &str) -> Vec<FormatSite> {
    let s = src.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = src[from..].find("format!(") {
        let start = from + pos;
        from = start + 8;
        // Skip occurrences inside comments.
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        if src[line_start..start].contains("//") {
            continue;
        }
        let mut i = start + 8;
        let mut depth = 0i32;
        let mut parts: Vec<String> = Vec::new();
        let mut cur = String::new();
        while i < s.len() {
            let c = s[i];
            let may_open = matches!(c, b'"' | b'\'')
                || (matches!(c, b'r' | b'b') && (i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_')));
            if may_open && let Some(end) = skip_literal(s, i) {
                cur.push_str(&src[i..end]);
                i = end;
                continue;
            }
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    break;
                }
                b')' | b']' | b'}' => depth -= 1,
                b',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    i += 1;
                    continue;
                }
                _ => {}
            }
            // Push the whole UTF-8 character.
            let len = std::str::from_utf8(&s[i..(i + 4).min(s.len())])
                .ok()
                .or_else(|| std::str::from_utf8(&s[i..i + 1]).ok())
                .and_then(|t| t.chars().next())
                .map_or(1, char::len_utf8);
            cur.push_str(&src[i..i + len]);
            i += len;
        }
        let mut parts = parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
        let Some(lit) = parts.next() else { continue };
        if !(lit.starts_with('"') || lit.starts_with("r\"") || lit.starts_with("r#")) {
            continue;
        }
        out.push(FormatSite { offset: start, literal: literal_body(&lit).to_string(), args: parts.collect() });
    }
    out
}

/// Placeholders of a format string: (byte offset in the string, name or
/// index as written; "" for `{}`).
fn placeholders(fmt: &str) -> Vec<(usize, String)> {
    let b = fmt.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if b.get(i + 1) == Some(&b'}') => i += 2,
            b'{' => {
                let end = fmt[i..].find('}').map_or(b.len(), |e| i + e);
                let inner = &fmt[i + 1..end];
                out.push((i, inner.split(':').next().unwrap_or("").trim().to_string()));
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// SQL keywords after which a placeholder must be a (quoted) identifier.
const IDENT_KEYWORDS: [&str; 8] = ["FROM", "INTO", "UPDATE", "TABLE", "JOIN", "USING", "PUBLICATION", "ONLY"];

/// Whether the placeholder at `at` stands where SQL expects an identifier:
/// right after one of [`IDENT_KEYWORDS`], or as `alias.{col}`.
fn identifier_position(fmt: &str, at: usize) -> Option<String> {
    let before = &fmt[..at];
    if let Some(stripped) = before.strip_suffix('.') {
        let alias: String = stripped.chars().rev().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let ahead = stripped[..stripped.len() - alias.len()].chars().last();
        if !alias.is_empty() && ahead != Some(':') && !alias.chars().all(|c| c.is_ascii_digit()) {
            return Some(format!("{}.", alias.chars().rev().collect::<String>()));
        }
        return None;
    }
    let trimmed = before.trim_end();
    if trimmed.len() == before.len() {
        return None; // no space between keyword and placeholder
    }
    let word: String = trimmed.chars().rev().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().chars().rev().collect();
    let ahead = trimmed[..trimmed.len() - word.len()].chars().last();
    (IDENT_KEYWORDS.contains(&word.as_str()) && ahead.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_')).then_some(word)
}

const QUOTING: [&str; 3] = ["quote_ident(", "qualified(", ".qualified()"];

/// The expression behind `name` as seen from `offset` in `src`: a named
/// argument, else the nearest preceding `let name = ...;`.
fn definition(src: &str, offset: usize, name: &str) -> Option<String> {
    let before = &src[..offset];
    let mut best: Option<usize> = None;
    for pat in [format!("let {name} ="), format!("let mut {name} ="), format!("let {name}:"), format!("let mut {name}:")] {
        if let Some(p) = before.rfind(&pat) {
            best = Some(best.map_or(p, |b| b.max(p)));
        }
    }
    let p = best?;
    let rest = &src[p..];
    let eq = rest.find('=')?;
    // Up to the statement's `;` at depth 0.
    let mut depth = 0i32;
    let b = rest.as_bytes();
    let mut i = eq + 1;
    while i < b.len() {
        if matches!(b[i], b'"' | b'\'')
            && let Some(end) = skip_literal(b, i)
        {
            i = end;
            continue;
        }
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b';' if depth == 0 => return Some(rest[eq + 1..i].trim().to_string()),
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Follows plain variables (`t`, `&t`) back to an expression, a few steps.
fn resolve(src: &str, offset: usize, expr: &str) -> String {
    let mut e = expr.trim().trim_start_matches('&').trim().to_string();
    for _ in 0..4 {
        if QUOTING.iter().any(|q| e.contains(q)) || !is_ident(&e) {
            return e;
        }
        match definition(src, offset, &e) {
            Some(d) => e = d.trim().trim_start_matches('&').trim().to_string(),
            None => return e,
        }
    }
    e
}

/// Violations in one file's text: SQL identifiers spliced into `format!`
/// without going through the quoting helpers.
fn unquoted_identifiers(file: &str, src: &str) -> Vec<String> {
    let mut found = Vec::new();
    for site in format_sites(src) {
        // Only SQL text (not PostgREST filters, messages, JSON).
        let sql = ["SELECT", "INSERT", "UPDATE", "DELETE", "ALTER", "CREATE", "GRANT", "TRUNCATE", "COPY"]
            .iter()
            .any(|k| site.literal.split(|c: char| !c.is_ascii_alphabetic()).any(|w| w == *k));
        if !sql {
            continue;
        }
        let named: Vec<(String, String)> = site
            .args
            .iter()
            .filter_map(|a| {
                let (n, e) = a.split_once('=')?;
                (is_ident(n.trim()) && !e.starts_with('=')).then(|| (n.trim().to_string(), e.trim().to_string()))
            })
            .collect();
        let positional: Vec<&String> = site
            .args
            .iter()
            .filter(|a| {
                !named.iter().any(|(n, _)| a.trim_start().starts_with(&format!("{n} =")) || a.trim_start().starts_with(&format!("{n}=")))
            })
            .collect();
        let mut next_positional = 0;
        for (at, name) in placeholders(&site.literal) {
            let expr: Option<String> = if name.is_empty() {
                next_positional += 1;
                positional.get(next_positional - 1).map(|s| s.to_string())
            } else if let Ok(n) = name.parse::<usize>() {
                positional.get(n).map(|s| s.to_string())
            } else {
                named.iter().find(|(n, _)| *n == name).map(|(_, e)| e.clone()).or_else(|| Some(name.clone()))
            };
            let Some(position) = identifier_position(&site.literal, at) else { continue };
            let expr = expr.unwrap_or_default();
            let resolved = resolve(src, site.offset, &expr);
            if !QUOTING.iter().any(|q| resolved.contains(q)) {
                let line = src[..site.offset].matches('\n').count() + 1;
                found.push(format!("{file}:{line}: `{position} {{{name}}}` splices `{expr}` (= `{resolved}`), not quote_ident/qualified"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_identifier_check_catches_what_it_should_and_only_that() {
    let bad = r#"
        fn f(table: &Table) {
            let t = table.name.clone();
            let sql = format!("SELECT * FROM {t} WHERE x = 1");
            let sql2 = format!("DELETE FROM {} WHERE id = $1", table.name);
            let sql3 = format!("UPDATE {tab} SET a = 1", tab = table.name);
            let sql4 = format!("SELECT x.{col} FROM {}", table.qualified(), col = table.pk);
        }"#;
    let v = unquoted_identifiers("bad.rs", bad);
    assert_eq!(v.len(), 4, "{v:#?}");
    let good = r#"
        fn f(table: &Table) {
            let t = table.qualified();
            let qpk = quote_ident(&pk.name);
            let list = cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
            let sql = format!("INSERT INTO {t} AS d ({list}) SELECT {list} FROM x WHERE d.{qpk} = $1::{ty}", ty = pk.type_name);
            let sql2 = format!("DELETE FROM {} WHERE {} = $1", qualified(&s, &n), quote_ident(&k));
            let msg = format!("table {} has no primary key", name);
            let filter = format!("(updated_at.gt.{ts},and(updated_at.eq.{ts},{}.gt.{}))", column(pk), filter_value(id));
            let j = format!("{{\"from\": {n}}}");
            let c = format!("{}::{}", a, b);
            // format!("SELECT * FROM {raw}") in a comment
        }"#;
    let v = unquoted_identifiers("good.rs", good);
    assert!(v.is_empty(), "{v:#?}");
    // And on the real source: unquote the down path's table name.
    let down = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/down.rs")).unwrap();
    assert!(unquoted_identifiers("down.rs", &down).is_empty());
    let mutated = down.replacen("let t = table.qualified();", "let t = table.name.clone();", 1);
    assert_ne!(mutated, down, "src/down.rs changed shape; pick another mutation");
    let v = unquoted_identifiers("down.rs", &mutated);
    assert!(!v.is_empty() && v.iter().all(|l| l.contains("{t}")), "{v:#?}");
}

#[test]
fn sql_built_with_format_quotes_every_identifier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        checked += format_sites(&src).len();
        violations.extend(unquoted_identifiers(&f.strip_prefix(&root).unwrap().display().to_string(), &src));
    }
    assert!(checked > 50, "only {checked} format! calls found: the scanner is broken");
    assert!(violations.is_empty(), "identifiers spliced into SQL without quoting:\n{}", violations.join("\n"));
}

// ---------------------------------------------------------------------------
// Postgres mode: TLS to the upstream database is verified too
// ---------------------------------------------------------------------------

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it:
/// (CA certificate, server certificate, server key), the key readable only by
/// the server's OS user, as PostgreSQL demands.
fn server_certificate(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].into_iter().find(|p| Path::new(p).exists())?;
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let o = Command::new(openssl).args(args).current_dir(dir).output().unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-days", "1", "-subj", "/CN=centrovision test CA", "-keyout", "ca.key", "-out", "ca.crt"]].concat());
    run(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]].concat());
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(p("server.crt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(p("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // As root the harness runs the server as another user (see cluster.rs).
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 {
        let user = std::env::var("PG_TEST_OS_USER").unwrap_or_else(|_| "postgres".into());
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, &user]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        std::os::unix::fs::chown(p("server.key"), Some(id("-u")), Some(id("-g"))).unwrap();
    }
    Some((p("ca.crt"), p("server.crt"), p("server.key")))
}

/// `mode = "postgres"` against an upstream that offers TLS with a
/// certificate from an unknown CA: `sslmode=require`, `verify-full` and the
/// default (prefer) all refuse it, never fall back to plain text and never
/// apply anything; the same server is accepted once its CA is named in
/// `[supabase] db_ca_file`, which shows that verification, and nothing
/// else, is what refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mode_verifies_the_upstream_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = server_certificate(dir.path()) else {
        eprintln!("SKIPPED: no openssl binary to make a self-signed certificate");
        return;
    };
    let up_cluster = Cluster::start(support::ClusterOptions {
        extra_conf: vec!["ssl = on".into(), format!("ssl_cert_file = '{}'", cert.display()), format!("ssl_key_file = '{}'", key.display())],
        ..Default::default()
    });
    let local = Cluster::shared().create_database("pg_tls_l").await;
    let upstream = up_cluster.create_database("pg_tls_u").await;
    let pair = Pair::on(local, upstream, Mode::Postgres).await;
    // The upstream functions, installed directly (init --upstream would need TLS).
    pair.install_upstream_sql().await;
    pair.ok(&["init"]).await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name) VALUES ('only over verified TLS')").await.unwrap();
    let config = pair.config_path().to_path_buf();
    let original = std::fs::read_to_string(&config).unwrap();
    let db_url_line = original.lines().find(|l| l.starts_with("db_url = ")).unwrap().to_string();
    let with = |extra: &str, ca: Option<&Path>| {
        let mut line = db_url_line.trim_end_matches('"').to_string();
        line.push_str(extra);
        line.push('"');
        let mut text = original.replace(&db_url_line, &line);
        if let Some(ca) = ca {
            text = text.replace("[supabase]\n", &format!("[supabase]\ndb_ca_file = {:?}\n", ca.display().to_string()));
        }
        std::fs::write(&config, text).unwrap();
    };
    for (extra, what) in
        [(" sslmode=require", "sslmode=require"), ("", "the default sslmode (prefer)"), (" sslmode=verify-full", "sslmode=verify-full")]
    {
        with(extra, None);
        let o = pair.exec(&["once"], &[]).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: a self-signed upstream must be refused:\n{err}");
        assert!(err.to_lowercase().contains("certificate"), "{what}: the error should name the certificate:\n{err}");
        assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 0, "{what}");
    }
    with(" sslmode=require", Some(&ca));
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services").await, 1);
}

// ---------------------------------------------------------------------------
// The SECURITY DEFINER functions write and read only the synced tables
// ---------------------------------------------------------------------------

/// A table of Supabase's own (`auth.users`, as a project has it) and a table
/// of the synced schema nobody listed in `[sync] tables`, on the upstream of
/// `p`, each with one row.
async fn tables_nobody_listed(p: &Pair) {
    p.upstream
        .connect()
        .await
        .batch_execute(
            "CREATE SCHEMA auth;
             CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO auth.users (id, email) VALUES ('00000000-0000-0000-0000-00000000aaaa', 'admin@clinic');
             CREATE TABLE public.staff_notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), note text,
                                              updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO public.staff_notes (note) VALUES ('upstream only');",
        )
        .await
        .expect("create auth.users and an unlisted table upstream");
}

/// One upsert element of `schema.table` in the apply's contract.
fn upsert(i: usize, schema: &str, table: &str, row: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"i": i, "s": schema, "t": table, "op": "upsert", "e": 1, "l": "0/1", "n": i, "row": row})
}

/// The refusal of a table the project does not sync: a privilege error (an
/// operator's, retried slowly, never parked nor retried at once) with
/// SQLSTATE 42501 that names the table and says how to sync it.
#[track_caller]
fn assert_refused_naming(what: &str, got: centrovision_sync::error::Result<impl std::fmt::Debug>, table: &str) {
    use centrovision_sync::error::{Class, ErrorKind, Retry};
    let e = match got {
        Ok(v) => panic!("{what}: expected a refusal, got {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.kind, ErrorKind::Privilege, "{what}: {e}");
    assert_eq!(e.code.as_deref(), Some("42501"), "{what}: {e}");
    let p = e.policy();
    assert_eq!((p.class, p.outage), (Class::Operator, false), "{what}: {e}");
    assert!(matches!(p.retry, Retry::Slowly(_)), "{what}: {e}");
    assert!(e.message.contains(&format!("{table} is not a table this project syncs")), "{what}: {e}");
    let hint = e.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("[sync] tables") && hint.contains("init --upstream"), "{what}: the hint says how to fix it: {e}");
}

async fn refusals_through<U: centrovision_sync::upstream::Upstream>(up: &U, p: &Pair) {
    use centrovision_sync::upstream::HashRequest;
    let intruder =
        serde_json::json!({"id": "00000000-0000-0000-0000-00000000bbbb", "email": "intruder@x", "updated_at": "2026-01-01T00:00:00Z"});
    let admin = serde_json::json!({"id": "00000000-0000-0000-0000-00000000aaaa", "email": "taken@x", "updated_at": "2099-01-01T00:00:00Z"});
    let batch = serde_json::json!([upsert(0, "auth", "users", intruder), upsert(1, "auth", "users", admin)]);
    assert_refused_naming("an apply into auth.users", up.apply(&batch.to_string()).await, "auth.users");

    let service = serde_json::json!({"id": "00000000-0000-0000-0000-00000000cccc", "name": "listed", "updated_at": "2026-01-01T00:00:00Z"});
    let note = serde_json::json!({"id": "00000000-0000-0000-0000-00000000dddd", "note": "unlisted", "updated_at": "2026-01-01T00:00:00Z"});
    let mixed = serde_json::json!([upsert(0, "public", "services", service.clone()), upsert(1, "public", "staff_notes", note)]);
    assert_refused_naming("an apply naming an unlisted table", up.apply(&mixed.to_string()).await, "public.staff_notes");

    let cols = ["email".to_string()];
    let auth_users = HashRequest { schema: "auth", table: "users", key_column: "id", cols: &cols, buckets: 4 };
    assert_refused_naming("hashing auth.users", up.bucket_hashes(&auth_users).await, "auth.users");
    let cols = ["note".to_string()];
    let notes = HashRequest { schema: "public", table: "staff_notes", key_column: "id", cols: &cols, buckets: 4 };
    assert_refused_naming("hashing rows of an unlisted table", up.row_hashes(&notes, &[0, 1, 2, 3]).await, "public.staff_notes");

    // Nothing was written: auth.users as it was, the listed row of the
    // refused call absent, no sync state for either.
    let up_db = &p.upstream;
    assert_eq!(count(up_db, "SELECT count(*) FROM auth.users WHERE email = 'admin@clinic'").await, 1);
    assert_eq!(count(up_db, "SELECT count(*) FROM auth.users").await, 1);
    assert_eq!(count(up_db, "SELECT count(*) FROM services").await, 0);
    assert_eq!(count(up_db, "SELECT count(*) FROM staff_notes").await, 1);
    assert_eq!(
        count(up_db, "SELECT count(*) FROM centrovision_sync.row_version WHERE table_name IN ('users', 'services', 'staff_notes')").await,
        0
    );

    // A listed table still goes through, both ways.
    let listed = serde_json::json!([upsert(0, "public", "services", service)]);
    let outcome = up.apply(&listed.to_string()).await.expect("a listed table is applied");
    assert_eq!((outcome.applied, outcome.rejected.len()), (vec![0], 0));
    assert_eq!(count(up_db, "SELECT count(*) FROM services WHERE name = 'listed'").await, 1);
    let cols = ["name".to_string()];
    let services = HashRequest { schema: "public", table: "services", key_column: "id", cols: &cols, buckets: 4 };
    let hashes = up.bucket_hashes(&services).await.expect("a listed table is hashed");
    assert!(hashes.contains("\"cols\": [\"name\"]") || hashes.contains("\"cols\":[\"name\"]"), "{hashes}");
}

/// The upstream functions run as their owner (SECURITY DEFINER: on Supabase
/// the `postgres` role), so whoever holds the service key could reach every
/// schema through them. They accept only the tables `init --upstream`
/// registered from `[sync] tables` in `[supabase] schema`: an apply or a
/// verify hash naming `auth.users`, or an unlisted table of the synced
/// schema, is refused as a whole with 42501 before anything is written, and
/// the service reads that as an operator's error with the fix in its hint;
/// listed tables still work.
async fn the_sync_functions_refuse_auth_users_and_unlisted_tables_and_write_nothing(mode: Mode) {
    let p = Pair::new("refuse_unsynced", mode).await;
    tables_nobody_listed(&p).await;
    p.init().await;
    let cfg = centrovision_sync::config::Config::load(p.config_path()).expect("the pair's config loads");
    match mode {
        Mode::Postgres => {
            let up = centrovision_sync::upstream::postgres::PgUpstream::new(&cfg).expect("postgres upstream");
            refusals_through(&up, &p).await;
        }
        Mode::Rest | Mode::RestClinicSchemaLowMaxRows => {
            let up = centrovision_sync::upstream::rest::RestUpstream::new(&cfg).expect("REST upstream");
            refusals_through(&up, &p).await;
        }
    }
}

/// A table added to `[sync] tables` and to the clinic's `init`, but never
/// set up upstream (`init --upstream` not re-run): `once` stops with the
/// refusal and its fix, the table's changes stay queued (not parked, not
/// lost), and after `init --upstream` they arrive.
async fn a_table_not_set_up_upstream_waits_queued_with_the_fix_until_init_upstream(mode: Mode) {
    let mut p = Pair::new("unsynced_added", mode).await;
    let ddl = "CREATE TABLE public.staff_notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), note text,
                                                updated_at timestamptz NOT NULL DEFAULT now())";
    for db in [&p.local, &p.upstream] {
        db.connect().await.batch_execute(ddl).await.expect("create staff_notes");
    }
    p.init().await;
    p.tables.push("staff_notes".into());
    p.write_config();
    p.ok(&["init"]).await; // the clinic only
    p.local.connect().await.batch_execute("INSERT INTO staff_notes (note) VALUES ('written at the clinic')").await.unwrap();

    let o = p.exec(&["once"], &[]).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("public.staff_notes is not a table this project syncs"), "{err}");
    assert!(err.contains("[sync] tables") && err.contains("init --upstream"), "the fix is in the message:\n{err}");
    let queued = "SELECT count(*) FROM _sync_pending WHERE table_name = 'staff_notes' AND NOT synced AND parked_at IS NULL";
    assert_eq!(count(&p.local.journal(), queued).await, 1, "the change stays queued, not parked");
    assert_eq!(count(&p.upstream, "SELECT count(*) FROM staff_notes").await, 0);

    p.init().await; // now with the upstream set up for it
    p.once().await;
    assert_eq!(count(&p.upstream, "SELECT count(*) FROM staff_notes WHERE note = 'written at the clinic'").await, 1);
    p.assert_converged().await;
}

crate::both_modes!(
    the_sync_functions_refuse_auth_users_and_unlisted_tables_and_write_nothing,
    a_table_not_set_up_upstream_waits_queued_with_the_fix_until_init_upstream,
);

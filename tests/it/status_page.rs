//! The status page (`GET /`) as a person sees it: headless Chromium loads it
//! from a real running service in three states and the rendered text says
//! what is going on; the page never reaches beyond 127.0.0.1; a listener
//! beyond loopback needs the token; and nobody looking, the page costs the
//! service no work on its database.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). Without
//! it these tests fail, saying how to install it: a page nobody rendered is
//! not a tested page. Screenshots (412×915, a phone) go under
//! `$CARGO_TARGET_TMPDIR/status_page/`; their paths are printed.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::sync::{Mode, Pair, Running, terminate};
use support::{Cluster, ClusterOptions, free_port, wait_for, wait_for_state};

/// Chromium on PATH, or a panic that says how to get it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium is not installed, and the status page tests need a real browser. \
         Install it with `apt-get install -y chromium` (Debian; `.ci/run` does this in CI)."
    );
}

/// What one headless Chromium run produced.
struct Rendered {
    /// `--dump-dom` output (empty for a screenshot run).
    dom: String,
    /// The URLs of every request the page made (its own load included).
    requested: Vec<String>,
}

/// Loads `url` in headless Chromium with every host name but 127.0.0.1
/// unresolvable, background networking off and a network log; either dumps
/// the DOM after scripts ran or writes a 412×915 screenshot to `shot`.
async fn render(url: &str, shot: Option<&Path>) -> Rendered {
    let bin = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let netlog = profile.path().join("netlog.json");
    let mut c = Command::new(bin);
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--safebrowsing-disable-auto-update",
        "--metrics-recording-only",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=5000",
    ]);
    c.arg(format!("--user-data-dir={}", profile.path().display()));
    c.arg(format!("--log-net-log={}", netlog.display()));
    match shot {
        Some(p) => c.arg(format!("--screenshot={}", p.display())).arg("--window-size=412,915"),
        None => c.arg("--dump-dom"),
    };
    c.arg(url).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("start chromium");
    let pid = child.id();
    let out = tokio::time::timeout(Duration::from_secs(40), tokio::task::spawn_blocking(move || child.wait_with_output()))
        .await
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("chromium did not finish loading {url} within 40 s")
        })
        .expect("join")
        .expect("chromium output");
    assert!(out.status.success(), "chromium failed on {url} ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(&netlog).unwrap_or_default();
    Rendered { dom: String::from_utf8_lossy(&out.stdout).into_owned(), requested: page_requests(&log, "http://127.0.0.1") }
}

/// The URLs of the requests the page made: in a Chromium network log,
/// every request Chromium started on behalf of a page carries that page's
/// site in its network isolation key; Chromium's own background requests
/// (time, accounts, spelling) carry another, and are not the page's doing.
fn page_requests(log: &str, site: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(log)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", log.trim_end().trim_end_matches(','))))
        .unwrap_or_else(|e| panic!("the network log is not JSON ({e})"));
    let start_job = v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_i64().expect("URL_REQUEST_START_JOB in the net log");
    let mut urls: Vec<String> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"].as_i64() == Some(start_job))
        .filter(|e| e["params"]["network_isolation_key"].as_str().is_some_and(|k| k.starts_with(site)))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// Asserts the page made the browser ask nothing of anyone but this
/// listener.
fn assert_only_local(r: &Rendered, port: u16) {
    let here = format!("http://127.0.0.1:{port}/");
    assert!(r.requested.iter().any(|u| u.starts_with(&here)), "the network log shows no request of the page: {:?}", r.requested);
    let outside: Vec<&String> = r.requested.iter().filter(|u| !u.starts_with(&here)).collect();
    assert!(outside.is_empty(), "the page made the browser reach beyond {here}: {outside:?}");
}

/// The visible text of a DOM dump (tags and the script/style bodies out).
fn text_of(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        out.push(' ');
        let tag_end = rest[i..].find('>').map(|j| i + j + 1).unwrap_or(rest.len());
        let tag = &rest[i..tag_end];
        rest = &rest[tag_end..];
        for skip in ["script", "style"] {
            if tag.starts_with(&format!("<{skip}")) {
                let close = format!("</{skip}>");
                rest = rest.find(&close).map(|j| &rest[j + close.len()..]).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out.replace("&amp;", "&").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where this test run's screenshots go.
fn shot_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir.join(format!("{name}.png"))
}

/// Renders the page, asserts its text holds every one of `expect`, takes
/// the screenshot and prints its path; returns the page text.
async fn look(port: u16, state: &str, expect: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{port}/");
    let r = render(&url, None).await;
    assert_only_local(&r, port);
    let text = text_of(&r.dom);
    for e in expect {
        assert!(text.contains(e), "state {state}: the rendered page does not say {e:?}; it says:\n{text}");
    }
    let shot = shot_path(state);
    let _ = std::fs::remove_file(&shot);
    let s = render(&url, Some(&shot)).await;
    assert_only_local(&s, port);
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "state {state}: no screenshot at {} ({len} bytes)", shot.display());
    println!("status page screenshot ({state}): {}", shot.display());
    text
}

/// Polls `/api/page` until its verdict is `verdict` and its first reason
/// contains `reason`.
async fn wait_verdict(port: u16, verdict: &str, reason: &str) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/api/page");
    wait_for_state(&format!("the page to say {verdict}: {reason}"), Duration::from_secs(60), || async {
        let v: serde_json::Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let first = v["reasons"][0].as_str().unwrap_or("").to_string();
        if v["verdict"] == verdict && first.contains(reason) { Ok(v) } else { Err(format!("{} / {:?}", v["verdict"], v["reasons"])) }
    })
    .await
}

/// The db_url of the config pointed at a port where nothing listens.
fn with_upstream_unreachable(config: &Path) {
    let closed = free_port();
    let text = std::fs::read_to_string(config).expect("config");
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("db_url") {
                let start = l.find("port=").expect("db_url names a port") + "port=".len();
                let end = l[start..].find(' ').map(|i| start + i).unwrap_or(l.len());
                format!("{}{closed}{}", &l[..start], &l[end..])
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(config, text.join("\n")).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_page_says_in_sync_then_offline_with_the_backlog_then_the_parked_row_and_why() {
    chromium();
    let mut pair = Pair::new("page_states", Mode::Postgres).await;
    let port = free_port();
    pair.sections = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n");
    pair.write_config();
    // Upstream prices are integers: a price with cents will be rejected.
    pair.upstream.connect().await.batch_execute("ALTER TABLE services ALTER COLUMN price TYPE integer USING price::integer").await.unwrap();
    pair.init().await;
    let local = pair.local.connect().await;

    // 1. In sync.
    let mut child = pair.spawn_run(&[]);
    local.batch_execute("INSERT INTO branches (name) VALUES ('Sucursal Centro')").await.unwrap();
    pair.upstream.connect().await.batch_execute("INSERT INTO branches (name) VALUES ('Sucursal Norte')").await.unwrap();
    pair.wait_converged(Duration::from_secs(60)).await;
    wait_verdict(port, "in_sync", "Todo está en Supabase").await;
    let text = look(port, "1-in-sync", &["Sincronizado", "Todo está en Supabase", "Supabase En línea", "branches"]).await;
    assert!(!text.contains("Sin internet"), "{text}");
    stop(&mut child);
    // The charts' history counted each row once, each way.
    assert_eq!(synced_per_direction(&pair).await, (1, 1), "rows counted in _sync_history (up, down)");

    // 2. Upstream unreachable, local changes waiting.
    with_upstream_unreachable(pair.config_path());
    let mut child = pair.spawn_run(&[]);
    local.batch_execute("INSERT INTO branches (name) SELECT 'offline ' || g FROM generate_series(1, 3) g").await.unwrap();
    wait_verdict(port, "behind", "3 cambios guardados localmente").await;
    look(
        port,
        "2-offline-backlog",
        &["Atrasado", "Sin internet desde", "3 cambios guardados localmente, se enviarán al volver", "Sin conexión"],
    )
    .await;
    stop(&mut child);

    // 3. Back online; a row upstream refuses is parked, with its reason.
    pair.write_config();
    let mut child = pair.spawn_run(&[]);
    local.batch_execute("INSERT INTO services (name, price) VALUES ('consulta', 12.50)").await.unwrap();
    let v = wait_verdict(port, "attention", "1 cambio rechazado por Supabase espera revisión").await;
    assert_eq!(v["reasons"].as_array().map(Vec::len), Some(1), "the offline backlog drained, only the parked row remains: {v}");
    let text = look(port, "3-parked-row", &["Necesita atención", "Cambios rechazados (1)", "services", "INSERT"]).await;
    assert!(text.contains("22P02") || text.contains("invalid input syntax"), "the page must say why the row was refused:\n{text}");
    stop(&mut child);
    // The three offline rows went up once back online; the parked one did not.
    assert_eq!(synced_per_direction(&pair).await, (4, 1), "rows counted in _sync_history (up, down)");
}

/// Rows counted in the hourly history: (up, down).
async fn synced_per_direction(pair: &Pair) -> (i64, i64) {
    let c = pair.local.connect().await;
    let r = c
        .query_one(
            "SELECT coalesce(sum(rows) FILTER (WHERE direction = 'UP'), 0)::int8,
                    coalesce(sum(rows) FILTER (WHERE direction = 'DOWN'), 0)::int8 FROM _sync_history",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

fn stop(child: &mut Running) {
    let status = terminate(child);
    assert!(status.success(), "run must stop cleanly on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_name_no_outside_address_and_the_browser_asks_only_127_0_0_1() {
    chromium();
    let mut pair = Pair::new("page_offline", Mode::Postgres).await;
    let port = free_port();
    pair.sections = format!("[http]\nlisten = \"127.0.0.1:{port}\"\nlanguage = \"en\"\n");
    pair.write_config();
    pair.init().await;
    let mut child = pair.spawn_run(&[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_verdict(port, "in_sync", "Everything is in Supabase").await;
    for path in ["/", "/api/page", "/assets/page.css", "/assets/page.js", "/login"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{path}: CSP {csp:?}");
        let body = r.text().await.unwrap();
        for scheme in ["http://", "https://", "//cdn", "ws://"] {
            assert!(!body.contains(scheme), "{path} names an outside address ({scheme}):\n{body}");
        }
    }
    let r = render(&format!("{base}/"), None).await;
    assert_only_local(&r, port);
    let text = text_of(&r.dom);
    // Rendered, scripts ran (the refresh swapped the live part in), in English.
    assert!(text.contains("In sync") && text.contains("Rows synced per hour") && text.contains("Sync now"), "{text}");
    stop(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_token_is_required_and_without_it_every_request_gets_401() {
    const TOKEN: &str = "page-token-0123456789abcdef";
    let mut pair = Pair::new("page_token", Mode::Postgres).await;
    // No token: refused before anything binds, naming the key.
    pair.sections = "[http]\nlisten = \"0.0.0.0:9\"\n".into();
    pair.write_config();
    let out = tokio::time::timeout(Duration::from_secs(30), pair.exec(&["run"], &[]))
        .await
        .expect("run with a non-loopback listen and no token must exit at once, not serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a config error exits 2:\n{err}");
    assert!(err.contains("[http] token") && err.contains("0.0.0.0:9") && err.contains("loopback"), "{err}");

    // With a token (on 127.0.0.1 here): nothing without it.
    let port = free_port();
    pair.sections = format!("[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n");
    pair.write_config();
    pair.init().await;
    let mut child = pair.spawn_run(&[]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = wait_for("the listener", Duration::from_secs(30), || async { http.get(format!("{base}/")).send().await.ok() }).await;
    assert_eq!(page.status(), 401);
    let body = page.text().await.unwrap();
    assert!(body.contains("name=\"token\"") && !body.contains("Sincronizado"), "the sign-in form, not the page:\n{body}");
    for (method, path) in [("GET", "/api/page"), ("GET", "/status"), ("GET", "/metrics"), ("GET", "/health"), ("POST", "/sync")] {
        let r = http.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        let r = http.request(method.parse().unwrap(), format!("{base}{path}")).bearer_auth("wrong-token-0123456789").send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = http.get(format!("{base}/status")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200, "the bearer token opens /status");
    // The sign-in form: a wrong token is refused, the right one sets the cookie.
    let r = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope-nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let cookie = r.headers().get("set-cookie").expect("the sign-in cookie").to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair_value = cookie.split(';').next().unwrap().to_string();
    let r = http.get(format!("{base}/")).header("cookie", &pair_value).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("id=\"banner\""), "the cookie opens the page");
    stop(&mut child);
    assert!(!pair.run_log().contains(TOKEN), "the token reached the service log");
}

/// Calls so far, on database `db` and its journal database, of (the page's
/// own reads: its hourly history and its parked rows, the latter in the
/// journal database; the health check's backlog sample, one per health
/// check), from pg_stat_statements.
async fn page_and_health_calls(cluster: &Cluster, db: &str) -> (i64, i64) {
    let r = cluster
        .connect("postgres")
        .await
        .query_one(
            "SELECT coalesce(sum(s.calls) FILTER (WHERE s.query LIKE '%WITH span AS%' OR s.query LIKE '%ORDER BY parked_at DESC%'), 0)::int8,
                    coalesce(sum(s.calls) FILTER (WHERE s.query LIKE 'INSERT INTO _sync_backlog_history%'), 0)::int8
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname::text IN ($1::text, $1::text || '_journal')",
            &[&db],
        )
        .await
        .expect("pg_stat_statements");
    (r.get(0), r.get(1))
}

/// Waits until `checks` more health checks ran (health_check_seconds = 1),
/// then answers the page's calls.
async fn page_calls_after_health_checks(cluster: &Cluster, db: &str, checks: i64) -> i64 {
    let (_, h0) = page_and_health_calls(cluster, db).await;
    wait_for_state(&format!("{checks} health checks"), Duration::from_secs(60), || async {
        let (page, health) = page_and_health_calls(cluster, db).await;
        if health >= h0 + checks { Ok(page) } else { Err(format!("{} health checks so far", health - h0)) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_looking_the_page_runs_none_of_its_queries_and_after_a_look_it_stops_again() {
    // Its own cluster: the shared one has no pg_stat_statements.
    let cluster =
        Cluster::start(ClusterOptions { extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()], ..Default::default() });
    cluster.connect("postgres").await.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.unwrap();
    let local = cluster.create_database("page_idle_l").await;
    let upstream = cluster.create_database("page_idle_u").await;
    let mut pair = Pair::on(local, upstream, Mode::Postgres).await;
    let port = free_port();
    pair.sections = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n");
    pair.write_config();
    pair.init().await;
    // A row synced up, so the history has something to show.
    pair.local.connect().await.batch_execute("INSERT INTO branches (name) VALUES ('Sucursal Centro')").await.unwrap();
    let db = pair.local.name.clone();
    let mut child = pair.spawn_run(&[]);
    pair.wait_converged(Duration::from_secs(60)).await;

    // Listening, nobody looking, three health checks: none of the page's reads ran.
    wait_for("the http listener", Duration::from_secs(30), || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok() })
        .await;
    let before = page_calls_after_health_checks(&cluster, &db, 3).await;
    assert_eq!(before, 0, "with [http] on and no request, the service ran the page's queries {before} times");

    // One look runs them (so the check above sees them when they run) ...
    let r = reqwest::get(format!("http://127.0.0.1:{port}/api/page")).await.unwrap();
    assert_eq!(r.status(), 200);
    let (looked, _) = page_and_health_calls(&cluster, &db).await;
    assert_eq!(looked, 2, "one GET /api/page reads the history once and the parked rows once");

    // ... and once nobody looks, nothing keeps reading for the page.
    let after = page_calls_after_health_checks(&cluster, &db, 3).await;
    assert_eq!(after, looked, "after the last request the page's queries ran {} more times", after - looked);
    stop(&mut child);
}

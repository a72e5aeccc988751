//! Tests for the PostgREST stand-in (tests/it/support/postgrest.rs): the
//! REST-mode tests trust it to answer like Supabase, so these check the
//! documented PostgREST/Supabase behaviour it claims to reproduce, against a
//! real database.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::postgrest::{Fault, PostgrestStandIn, StandInOptions};
use support::{Cluster, ClusterOptions, StopMode, TestDb, wait_for};

const KEY: &str = "sb_secret_standin_test_key";

const CURSOR_TS: &str = "2024-01-01T10:00:00.123456+00:00";
const CURSOR_ID: &str = "8c1e0000-0000-4000-8000-000000000000";

const SCHEMA: &str = "
CREATE TABLE public.patients (
    id uuid PRIMARY KEY,
    name text,
    updated_at timestamptz NOT NULL
);
INSERT INTO public.patients VALUES
  ('11111111-1111-4111-8111-111111111111', 'a', '2024-01-01 10:00:00.123455+00'),
  ('22222222-2222-4222-8222-222222222222', 'b', '2024-01-01 10:00:00.123456+00'),
  ('8c1e0000-0000-4000-8000-000000000000', 'c', '2024-01-01 10:00:00.123456+00'),
  ('99999999-9999-4999-8999-999999999999', 'd', '2024-01-01 10:00:00.123456+00'),
  ('00000000-0000-4000-8000-000000000001', 'e', '2024-01-01 10:00:00.123457+00'),
  ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'f', '2024-01-01 10:00:01+00');
CREATE TABLE public.items (n int PRIMARY KEY);
INSERT INTO public.items SELECT g FROM generate_series(1, 30) g;
CREATE FUNCTION public.apply_batch(changes jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('applied', coalesce(jsonb_agg((c->>'i')::int ORDER BY o), '[]'))
    FROM jsonb_array_elements(changes) WITH ORDINALITY AS x(c, o)
$$;
CREATE FUNCTION public.add_them(a int, b int DEFAULT 10) RETURNS int LANGUAGE sql AS $$
  SELECT a + b
$$;
CREATE FUNCTION public.numbers(n int) RETURNS SETOF int LANGUAGE sql AS $$
  SELECT generate_series(1, n)
$$;
CREATE FUNCTION public.touch() RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.fail_with(msg text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%', msg USING DETAIL = 'some detail', HINT = 'some hint';
END
$$;
";

async fn setup(hint: &str) -> (TestDb, PostgrestStandIn) {
    let db = Cluster::shared().create_database(hint).await;
    db.connect().await.batch_execute(SCHEMA).await.expect("test schema");
    let standin = PostgrestStandIn::start(&db, KEY).await;
    (db, standin)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest client")
}

/// GET with a raw (already encoded) path and query.
async fn get_raw(s: &PostgrestStandIn, path_and_query: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path_and_query}", s.url()))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"))
}

async fn status_and_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

fn names(rows: &Value) -> Vec<&str> {
    rows.as_array().unwrap_or_else(|| panic!("expected an array, got {rows}")).iter().map(|r| r["name"].as_str().expect("name")).collect()
}

async fn rpc(s: &PostgrestStandIn, func: &str, body: Value) -> (u16, Value) {
    let resp = client().post(format!("{}/rest/v1/rpc/{func}", s.url())).header("apikey", KEY).json(&body).send().await.expect("POST rpc");
    status_and_json(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_page_with_or_and_quoted_microsecond_timestamps_returns_the_next_rows_in_order() {
    let (_db, s) = setup("standin keyset page").await;
    let or = format!("(updated_at.gt.\"{CURSOR_TS}\",and(updated_at.eq.\"{CURSOR_TS}\",id.gt.\"{CURSOR_ID}\"))");
    let page = |limit: &'static str| {
        let or = or.clone();
        let url = format!("{}/rest/v1/patients", s.url());
        async move {
            let resp = client()
                .get(url)
                .header("apikey", KEY)
                .query(&[("select", "*"), ("or", or.as_str()), ("order", "updated_at.asc,id.asc"), ("limit", limit)])
                .send()
                .await
                .expect("GET page");
            assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
            status_and_json(resp).await
        }
    };

    let (status, rows) = page("2").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(names(&rows), ["d", "e"]);
    assert_eq!(
        rows[0],
        json!({"id": "99999999-9999-4999-8999-999999999999", "name": "d",
               "updated_at": "2024-01-01T10:00:00.123456+00:00"}),
        "rows are rendered by json_agg, timestamps at full precision in UTC"
    );
    assert_eq!(rows[1]["updated_at"], "2024-01-01T10:00:00.123457+00:00");

    let (status, rows) = page("10").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(names(&rows), ["d", "e", "f"]);
    assert_eq!(rows[2]["updated_at"], "2024-01-01T10:00:01+00:00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unencoded_plus_in_a_timestamp_fails_with_22007_while_percent_2b_works() {
    let (_db, s) = setup("standin plus sign").await;

    // `+` decodes to a space, as in real PostgREST: PostgreSQL rejects it.
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/patients?updated_at=gt.2024-01-01T10:00:00.123456+00:00").await).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "22007", "{err}");
    assert!(err["message"].as_str().unwrap().contains("2024-01-01T10:00:00.123456 00:00"), "{err}");

    let (status, rows) =
        status_and_json(get_raw(&s, "/rest/v1/patients?updated_at=gt.2024-01-01T10:00:00.123456%2B00:00&order=updated_at.asc").await).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(names(&rows), ["e", "f"]);

    // Outside logic trees and `in` lists, double quotes are part of the value.
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/patients?name=eq.%22d%22").await).await;
    assert_eq!((status, rows), (200, json!([])));
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/patients?name=eq.d").await).await;
    assert_eq!((status, names(&rows)), (200, vec!["d"]));
    let (status, err) = status_and_json(get_raw(&s, &format!("/rest/v1/patients?id=eq.%22{CURSOR_ID}%22")).await).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("22P02")), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_with_quoted_uuids_returns_exactly_those_rows() {
    let (_db, s) = setup("standin in list").await;
    let resp = client()
        .get(format!("{}/rest/v1/patients", s.url()))
        .header("apikey", KEY)
        .query(&[("id", "in.(\"99999999-9999-4999-8999-999999999999\",\"22222222-2222-4222-8222-222222222222\")"), ("order", "id.desc")])
        .send()
        .await
        .expect("GET in");
    let (status, rows) = status_and_json(resp).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(names(&rows), ["d", "b"]);

    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/patients?name=not.in.(a,b,c,d)&order=name.desc").await).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(names(&rows), ["f", "e"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_applies_and_max_rows_caps_it_silently() {
    let (_db, s) = setup("standin max rows").await;
    let count = |path: &'static str| {
        let s = &s;
        async move {
            let resp = get_raw(s, path).await;
            let range = resp.headers()["content-range"].to_str().unwrap().to_owned();
            let (status, rows) = status_and_json(resp).await;
            assert_eq!(status, 200, "{rows}");
            (rows.as_array().unwrap().len(), range)
        }
    };
    assert_eq!(count("/rest/v1/items?limit=5&order=n").await, (5, "0-4/*".to_owned()));
    assert_eq!(count("/rest/v1/items").await.0, 30);

    s.set_max_rows(10);
    assert_eq!(count("/rest/v1/items").await, (10, "0-9/*".to_owned()));
    assert_eq!(count("/rest/v1/items?limit=20").await.0, 10, "capped, no error");
    assert_eq!(count("/rest/v1/items?limit=3").await.0, 3);
    assert_eq!(count("/rest/v1/items?n=gt.100").await, (0, "*/*".to_owned()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_passes_named_arguments_and_returns_the_bare_result() {
    let (_db, s) = setup("standin rpc").await;
    let (status, body) = rpc(&s, "apply_batch", json!({"changes": [{"i": 0}, {"i": 2}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"applied": [0, 2]}));

    let (status, body) = rpc(&s, "add_them", json!({"a": 1, "b": 2})).await;
    assert_eq!((status, body), (200, json!(3)));
    let (status, body) = rpc(&s, "add_them", json!({"a": 1})).await;
    assert_eq!((status, body), (200, json!(11)), "defaults may be omitted");

    let (status, body) = rpc(&s, "numbers", json!({"n": 3})).await;
    assert_eq!((status, body), (200, json!([1, 2, 3])), "setof → array");
    s.set_max_rows(2);
    let (status, body) = rpc(&s, "numbers", json!({"n": 3})).await;
    assert_eq!((status, body), (200, json!([1, 2])), "capped by max rows");

    let resp = client().post(format!("{}/rest/v1/rpc/touch", s.url())).header("apikey", KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 204, "void → 204");
    assert_eq!(resp.text().await.unwrap(), "");

    // RAISE EXCEPTION → P0001 → 400 with PostgreSQL's fields.
    let (status, body) = rpc(&s, "fail_with", json!({"msg": "nope"})).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"code": "P0001", "details": "some detail", "hint": "some hint", "message": "nope"}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_404_pgrst205() {
    let (_db, s) = setup("standin missing table").await;
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/nope?select=*").await).await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "PGRST205");
    assert_eq!(err["message"], "Could not find the table 'public.nope' in the schema cache");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_function_or_unknown_argument_is_404_pgrst202() {
    let (_db, s) = setup("standin missing function").await;
    let (status, err) = rpc(&s, "nope", json!({"x": 1})).await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["code"], "PGRST202");
    assert_eq!(err["message"], "Could not find the function public.nope(x) in the schema cache");
    assert_eq!(
        err["details"],
        "Searched for the function public.nope with parameter x or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."
    );

    let (status, err) = rpc(&s, "apply_batch", json!({"chnges": []})).await;
    assert_eq!((status, err["code"].as_str()), (404, Some("PGRST202")), "{err}");
    assert_eq!(err["hint"], "Perhaps you meant to call the function public.apply_batch(changes)");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_api_key_is_401_from_the_gateway() {
    let (_db, s) = setup("standin api key").await;
    let url = format!("{}/rest/v1/patients", s.url());

    let resp = client().get(&url).header("apikey", "wrong").send().await.unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "Invalid API key");
    assert!(body.get("code").is_none(), "the gateway sends no code: {body}");

    let (status, body) = status_and_json(client().get(&url).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "No API key found in request");

    // A non-JWT key sent as a Bearer token reaches PostgREST, which refuses it.
    let resp = client().get(&url).header("apikey", KEY).bearer_auth(KEY).send().await.unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "PGRST301");
    assert_eq!(body["message"], "Expected 3 parts in JWT; got 1");
    assert_eq!(s.requests("/rest/v1/patients"), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_429_with_retry_after_is_served_once_then_service_resumes() {
    let (_db, s) = setup("standin queued 429").await;
    s.faults().push("/rest/v1/", Fault::Status { code: 429, retry_after_secs: Some(7), body: None });
    let resp = get_raw(&s, "/rest/v1/patients").await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let resp = get_raw(&s, "/rest/v1/patients").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(s.requests("/rest/v1/patients"), 2);
    assert_eq!(s.requests("/rest/v1/rpc/"), 0);

    // A fault for another route does not touch this one.
    s.faults().push("/rest/v1/rpc/", Fault::MalformedJson);
    assert_eq!(get_raw(&s, "/rest/v1/patients").await.status().as_u16(), 200);
    let resp =
        client().post(format!("{}/rest/v1/rpc/add_them", s.url())).header("apikey", KEY).json(&json!({"a": 1})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_and_delays_apply_until_cleared() {
    let (_db, s) = setup("standin persistent fault").await;
    s.faults().set_persistent("/rest/v1/", Some(Fault::Status { code: 503, retry_after_secs: None, body: None }));
    for _ in 0..3 {
        let (status, body) = status_and_json(get_raw(&s, "/rest/v1/items").await).await;
        assert_eq!((status, body), (503, json!({"message": "Service Unavailable"})));
    }
    s.faults().set_persistent("/rest/v1/", None);
    assert_eq!(get_raw(&s, "/rest/v1/items").await.status().as_u16(), 200);

    s.faults().push("/rest/v1/items", Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(get_raw(&s, "/rest/v1/items").await.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.requests("/rest/v1/items"), 5);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_connection_closes_the_connection_without_a_response() {
    let (_db, s) = setup("standin drop connection").await;
    // One client throughout: the dropped connection is a pooled keep-alive
    // one, and the client must still see the failure (no silent retry).
    let http = client();
    let get = || http.get(format!("{}/rest/v1/patients", s.url())).header("apikey", KEY).send();
    assert_eq!(get().await.unwrap().status().as_u16(), 200);
    s.faults().push("/rest/v1/patients", Fault::DropConnection);
    let err = get().await.expect_err("the connection is closed before any response");
    assert!(err.status().is_none(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(get().await.unwrap().status().as_u16(), 200);
    assert_eq!(s.requests("/rest/v1/patients"), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_503_pgrst000_until_it_is_back() {
    let cluster = Cluster::start(ClusterOptions::default());
    let db = cluster.create_database("standin outage").await;
    db.connect().await.batch_execute(SCHEMA).await.unwrap();
    let s = PostgrestStandIn::start(&db, KEY).await;
    assert_eq!(get_raw(&s, "/rest/v1/items").await.status().as_u16(), 200);

    cluster.stop(StopMode::Fast);
    // The first request may still hold a pooled connection that just died
    // (PGRST001); from then on every request tries a fresh one (PGRST000).
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/items").await).await;
    assert_eq!(status, 503, "{err}");
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/items").await).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["code"], "PGRST000");
    assert_eq!(err["message"], "Database connection error. Retrying the connection.");

    cluster.start_again();
    wait_for("the stand-in to serve again", Duration::from_secs(30), || async {
        (get_raw(&s, "/rest/v1/items").await.status().as_u16() == 200).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_gzipped_when_the_client_asks() {
    let (_db, s) = setup("standin gzip").await;
    let resp = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(format!("{}/rest/v1/items", s.url()))
        .header("apikey", KEY)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(resp.headers()["content-range"], "0-29/*");
    // And the default client (gzip feature) decodes it transparently.
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/items").await).await;
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(30)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_invalid_requests_get_postgrest_errors_and_never_break_the_server() {
    let (_db, s) = setup("standin bad requests").await;
    // A value that doesn't start with an operator is not a filter at all:
    // PostgREST ignores it on reads (a typo'd operator returns every row).
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/patients?id=zz.1").await).await;
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(6)));
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/patients?id=not.zz.1").await).await;
    assert_eq!(status, 400);
    assert_eq!(
        err,
        json!({"code": "PGRST100", "details": "unknown single value operator zz", "hint": null,
               "message": "\"failed to parse filter (not.zz.1)\" (line 1, column 8)"})
    );
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/patients?nope=eq.1").await).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("42703")), "{err}");
    assert_eq!(err["message"], "column patients.nope does not exist");

    let cases: &[(&str, u16, &str)] = &[
        ("or=(id.eq.1", 400, "PGRST100"),
        ("or=()", 400, "PGRST100"),
        ("or=", 400, "PGRST100"),
        ("or=(and(a.eq.1),", 400, "PGRST100"),
        ("or=((((((((((((", 400, "PGRST100"),
        ("id=in.1,2", 400, "PGRST100"),
        ("id=is.maybe", 400, "PGRST100"),
        ("order=id.ac", 400, "PGRST100"),
        ("order=,", 400, "PGRST100"),
        ("order=nope.asc", 400, "42703"),
        ("id=eq.not-a-uuid", 400, "22P02"),
        ("name=eq.%00%FF%FE", 200, ""),
        ("name=like.*x%27%3B%20drop%20table%20patients%3B--", 200, ""),
        ("%22na%22%22me%22=eq.x", 400, "42703"),
        ("id=like.1", 404, "42883"),
        ("limit=-1", 416, "PGRST103"),
        ("or=(name.eq.%22unterminated)", 200, ""),
        ("select=name:id", 501, "STANDIN"),
        ("id=fts.x", 501, "STANDIN"),
    ];
    for (query, want_status, want_code) in cases {
        let resp = get_raw(&s, &format!("/rest/v1/patients?{query}")).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, *want_status, "{query}: {text}");
        if !want_code.is_empty() {
            let err: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(err["code"], *want_code, "{query}: {text}");
        }
    }
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/patients").await).await;
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(6)));

    // Invalid RPC bodies.
    let resp = client()
        .post(format!("{}/rest/v1/rpc/add_them", s.url()))
        .header("apikey", KEY)
        .header("content-type", "application/json")
        .body("{\"a\": ")
        .send()
        .await
        .unwrap();
    let (status, err) = status_and_json(resp).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("PGRST102")), "{err}");
    let (status, err) = rpc(&s, "add_them", json!({"a": "x"})).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("22P02")), "{err}");
    s.stop().await;
}

/// Functions that tell who runs a request and under which settings.
const ROLE_PROBES: &str = "
CREATE FUNCTION public.whoami() RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('current_user', current_user, 'session_user', session_user,
                            'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                            'statement_timeout', current_setting('statement_timeout'),
                            'read_only', current_setting('transaction_read_only'))
$$;
CREATE FUNCTION public.read_server_file() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('postgresql.conf') $$;
CREATE FUNCTION public.make_role() RETURNS void LANGUAGE plpgsql AS $$ BEGIN CREATE ROLE standin_intruder SUPERUSER; END $$;
CREATE FUNCTION public.nap(seconds float8) RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep(seconds) $$;
CREATE FUNCTION public.note(t text) RETURNS int LANGUAGE sql AS $$ INSERT INTO public.items VALUES (length(t) + 1000) RETURNING n $$;
CREATE VIEW public.writes_when_read AS SELECT public.note('read') AS n;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_as_service_role_switched_to_from_the_authenticator_and_cannot_do_superuser_things() {
    let (db, s) = setup("standin roles").await;
    db.connect().await.batch_execute(ROLE_PROBES).await.unwrap();
    let (status, who) = rpc(&s, "whoami", json!({})).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["current_user"], "service_role", "{who}");
    assert_eq!(who["session_user"], "authenticator", "logged in as the authenticator: {who}");
    assert_eq!(who["superuser"], false, "{who}");
    assert_eq!(who["statement_timeout"], "8s", "the authenticator's timeout, as on Supabase: {who}");

    // Superuser-only things are refused with PostgreSQL's 42501 → 403.
    let (status, err) = rpc(&s, "read_server_file", json!({})).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("42501")), "{err}");
    let (status, err) = rpc(&s, "make_role", json!({})).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("42501")), "{err}");
    let roles = db.connect().await.query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'standin_intruder'", &[]).await.unwrap();
    assert_eq!(roles.get::<_, i64>(0), 0);

    // Each request is its own transaction: a failed one leaves nothing behind
    // and the connection serves the next one.
    let (status, n) = rpc(&s, "note", json!({"t": "abc"})).await;
    assert_eq!((status, n), (200, json!(1003)));
    let (status, err) = rpc(&s, "note", json!({"t": "abc"})).await;
    assert_eq!((status, err["code"].as_str()), (409, Some("23505")), "{err}");
    let (status, rows) = status_and_json(get_raw(&s, "/rest/v1/items?n=gte.1000").await).await;
    assert_eq!((status, rows), (200, json!([{"n": 1003}])));
    // Reads run in a READ ONLY transaction: 25006 → 405, as from PostgREST.
    let (status, err) = status_and_json(get_raw(&s, "/rest/v1/writes_when_read").await).await;
    assert_eq!((status, err["code"].as_str()), (405, Some("25006")), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_the_role_timeout_is_500_57014_and_the_impersonated_roles_setting_applies() {
    let (db, s) = setup("standin timeout").await;
    db.connect().await.batch_execute(ROLE_PROBES).await.unwrap();
    s.set_statement_timeout(Some(Duration::from_millis(300))).await;
    let started = Instant::now();
    let (status, err) = rpc(&s, "nap", json!({"seconds": 5})).await;
    assert_eq!((status, err["code"].as_str()), (500, Some("57014")), "{err}");
    assert_eq!(err["message"], "canceling statement due to statement timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "cancelled by the timeout, not finished: {:?}", started.elapsed());
    let (status, n) = rpc(&s, "nap", json!({"seconds": 0})).await;
    assert_eq!((status, n), (200, json!(1)), "the pool's connection still works");

    // PostgREST applies the impersonated role's own settings per request.
    s.set_statement_timeout(None).await;
    s.set_role_setting("service_role", "statement_timeout", Some("250ms")).await;
    let (status, who) = rpc(&s, "whoami", json!({})).await;
    assert_eq!((status, &who["statement_timeout"]), (200, &json!("250ms")), "{who}");
    let (status, err) = rpc(&s, "nap", json!({"seconds": 5})).await;
    assert_eq!((status, err["code"].as_str()), (500, Some("57014")), "{err}");
    s.set_role_setting("service_role", "statement_timeout", None).await;
    let (_, who) = rpc(&s, "whoami", json!({})).await;
    assert_eq!(who["statement_timeout"], "8s", "{who}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_pick_the_schema_of_tables_and_functions_and_an_unexposed_one_is_406_pgrst106() {
    let db = Cluster::shared().create_database("standin profiles").await;
    db.connect()
        .await
        .batch_execute(&format!(
            "{SCHEMA}
             CREATE SCHEMA clinic;
             CREATE TABLE clinic.items (n int PRIMARY KEY);
             INSERT INTO clinic.items VALUES (7), (8);
             CREATE FUNCTION clinic.add_them(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT 100 * (a + b) $$;
             CREATE SCHEMA hidden;
             CREATE TABLE hidden.items (n int);"
        ))
        .await
        .unwrap();
    let options = StandInOptions { schemas: vec!["public".into(), "clinic".into()], ..StandInOptions::default() };
    let s = PostgrestStandIn::start_with(&db, KEY, options).await;
    let get = |profile: Option<&'static str>| {
        let mut req = client().get(format!("{}/rest/v1/items?order=n", s.url())).header("apikey", KEY);
        if let Some(p) = profile {
            req = req.header("Accept-Profile", p);
        }
        async move { status_and_json(req.send().await.unwrap()).await }
    };
    let (status, rows) = get(Some("clinic")).await;
    assert_eq!((status, rows), (200, json!([{"n": 7}, {"n": 8}])));
    let (status, rows) = get(None).await;
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(30)), "no header: the first exposed schema");

    let (status, err) = get(Some("hidden")).await;
    assert_eq!(status, 406, "{err}");
    assert_eq!(
        err,
        json!({"code": "PGRST106", "details": null, "hint": "Only the following schemas are exposed: public, clinic",
               "message": "Invalid schema: hidden"})
    );

    // POST reads Content-Profile (Accept-Profile is for reads).
    let call = |header: &'static str, profile: &'static str| {
        let req = client()
            .post(format!("{}/rest/v1/rpc/add_them", s.url()))
            .header("apikey", KEY)
            .header(header, profile)
            .json(&json!({"a": 1, "b": 2}));
        async move { status_and_json(req.send().await.unwrap()).await }
    };
    assert_eq!(call("Content-Profile", "clinic").await, (200, json!(300)));
    assert_eq!(call("Accept-Profile", "clinic").await, (200, json!(3)), "ignored on POST: public.add_them");
    let (status, err) = call("Content-Profile", "hidden").await;
    assert_eq!((status, err["code"].as_str()), (406, Some("PGRST106")), "{err}");
    let (status, err) = {
        let req = client().post(format!("{}/rest/v1/rpc/numbers", s.url())).header("apikey", KEY).header("Content-Profile", "clinic");
        status_and_json(req.json(&json!({"n": 1})).send().await.unwrap()).await
    };
    assert_eq!((status, err["code"].as_str()), (404, Some("PGRST202")), "{err}");
    assert_eq!(err["message"], "Could not find the function clinic.numbers(n) in the schema cache");
    let (status, err) = {
        let req = client().get(format!("{}/rest/v1/patients", s.url())).header("apikey", KEY).header("Accept-Profile", "clinic");
        status_and_json(req.send().await.unwrap()).await
    };
    assert_eq!((status, err["message"].as_str()), (404, Some("Could not find the table 'clinic.patients' in the schema cache")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_count_exact_reports_the_total_past_the_max_rows_cap_and_unknown_preferences_are_ignored_unless_strict() {
    let (db, s) = setup("standin prefer").await;
    db.connect().await.batch_execute(ROLE_PROBES).await.unwrap();
    s.set_max_rows(10);
    let get = |prefer: &'static str, query: &'static str| {
        let req = client().get(format!("{}/rest/v1/items?{query}", s.url())).header("apikey", KEY).header("Prefer", prefer);
        async move {
            let resp = req.send().await.unwrap();
            let range = resp.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned());
            let applied = resp.headers().get("preference-applied").map(|v| v.to_str().unwrap().to_owned());
            let (status, rows) = status_and_json(resp).await;
            (status, rows.as_array().map(Vec::len), range, applied)
        }
    };
    assert_eq!(get("count=exact", "order=n").await, (206, Some(10), Some("0-9/30".into()), None), "a part of 30 rows");
    assert_eq!(get("count=exact", "n=lte.5").await, (200, Some(5), Some("0-4/5".into()), None), "all of them");
    assert_eq!(get("count=exact", "n=gt.100").await, (200, Some(0), Some("*/0".into()), None));
    assert_eq!(get("count=exact", "offset=40").await.0, 416);
    assert_eq!(get("nonsense, return=minimal", "n=lte.5").await, (200, Some(5), Some("0-4/*".into()), None), "lenient by default");
    let (status, err) = {
        let req = client().get(format!("{}/rest/v1/items", s.url())).header("apikey", KEY).header("Prefer", "handling=strict, nonsense");
        status_and_json(req.send().await.unwrap()).await
    };
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        err,
        json!({"code": "PGRST122", "details": "Invalid preferences: nonsense", "hint": null,
               "message": "Invalid preferences given with handling=strict"})
    );

    // tx=rollback: ignored with Supabase's db-tx-end = commit, honoured
    // (and reported) when overrides are allowed.
    let note = |t: &'static str| {
        let req = client()
            .post(format!("{}/rest/v1/rpc/note", s.url()))
            .header("apikey", KEY)
            .header("Prefer", "tx=rollback")
            .json(&json!({"t": t}));
        async move {
            let resp = req.send().await.unwrap();
            let applied = resp.headers().get("preference-applied").map(|v| v.to_str().unwrap().to_owned());
            (resp.status().as_u16(), applied)
        }
    };
    assert_eq!(note("a").await, (200, None));
    s.set_tx_override(true);
    assert_eq!(note("bb").await, (200, Some("tx=rollback".into())));
    let kept = db.connect().await.query_one("SELECT array_agg(n ORDER BY n) FROM items WHERE n > 1000", &[]).await.unwrap();
    assert_eq!(kept.get::<_, Vec<i32>>(0), vec![1001], "the first committed, the second rolled back");
    s.stop().await;
}

/// The kit's third mode is what it says, or every `all_modes!` test run in it
/// proves nothing more than `rest`: the pair's upstream tables are in
/// `clinic` (and not in `public`), the tests' own unqualified upstream SQL
/// reaches them, the config names the schema, and a full page the service
/// asks for (its `batch_size`) comes back cut to 300 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_in_the_clinic_schema_mode_has_its_tables_in_clinic_and_gets_pages_cut_to_300_rows() {
    use support::sync::{CLINIC_SCHEMA, LOWERED_MAX_ROWS, Mode, Pair, count};
    let pair = Pair::new("mode_clinic", Mode::RestClinicSchemaLowMaxRows).await;
    assert_eq!((pair.upstream_schema.as_str(), LOWERED_MAX_ROWS), (CLINIC_SCHEMA, 300));
    assert!(pair.batch_size > LOWERED_MAX_ROWS, "batch_size {} must stay above max rows", pair.batch_size);
    let config = std::fs::read_to_string(pair.config_path()).expect("read config");
    assert!(config.contains("mode = \"rest\"") && config.contains("schema = \"clinic\""), "{config}");
    let where_ = "SELECT (to_regclass('clinic.services') IS NOT NULL AND to_regclass('public.services') IS NULL)::int::bigint";
    assert_eq!(count(&pair.upstream, where_).await, 1, "services must be in clinic only");
    pair.upstream
        .connect()
        .await
        .batch_execute("INSERT INTO services (id, name) SELECT gen_random_uuid(), 's' || g FROM generate_series(1, 500) g")
        .await
        .expect("unqualified upstream SQL reaches clinic.services");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM clinic.services").await, 500);
    let url = format!("{}/rest/v1/services?select=id&order=id&limit={}", pair.standin().url(), pair.batch_size);
    let page = client().get(&url).header("apikey", &pair.service_key).header("Accept-Profile", CLINIC_SCHEMA).send().await.expect("GET");
    assert_eq!(page.status(), 200);
    let rows: Vec<Value> = page.json().await.expect("JSON rows");
    assert_eq!(rows.len(), LOWERED_MAX_ROWS, "a page of {} asked for comes back cut to max rows", pair.batch_size);
    assert_eq!(pair.standin().capped_reads(), 1, "the cut read is counted, so a test can show it paged past the cap");
    let url = format!("{}/rest/v1/services?select=id&order=id&limit={LOWERED_MAX_ROWS}", pair.standin().url());
    let page = client().get(&url).header("apikey", &pair.service_key).header("Accept-Profile", CLINIC_SCHEMA).send().await.expect("GET");
    assert_eq!(page.json::<Vec<Value>>().await.expect("JSON rows").len(), LOWERED_MAX_ROWS);
    assert_eq!(pair.standin().capped_reads(), 1, "a read that asked for max rows or fewer was not cut");
}

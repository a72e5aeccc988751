//! Tests for the PostgREST stand-in (tests/it/support/postgrest.rs): the
//! REST-mode tests trust it to answer like Supabase, so these check the
//! documented PostgREST/Supabase behaviour it claims to reproduce, against a
//! real database.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::postgrest::{Fault, PostgrestStandIn};
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

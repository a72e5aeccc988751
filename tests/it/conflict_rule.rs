//! The conflict rule, line by line, against the upstream SQL itself.

use crate::support;
use support::Cluster;
use tokio_postgres::Client;

const K: &str = "00000000-0000-0000-0000-00000000c0de";

struct Up {
    c: Client,
    _db: support::TestDb,
}

impl Up {
    async fn new(hint: &str) -> Up {
        let db = Cluster::shared().create_database(hint).await;
        let c = db.connect().await;
        c.batch_execute(&support::sync::upstream_sql()).await.expect("install upstream SQL");
        c.batch_execute(
            "CREATE TABLE notes (id uuid PRIMARY KEY, body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
             SELECT centrovision_sync.enroll_table('public', 'notes');",
        )
        .await
        .expect("table");
        Up { c, _db: db }
    }

    /// Applies one element as `writer`; returns "applied", "kept" or the rejection code.
    async fn put(&self, writer: &str, lsn: &str, ordinal: i32, body: &str, stamp: &str) -> String {
        let el = serde_json::json!([{
            "i": 1, "t": "notes", "op": "upsert", "e": 1, "l": lsn, "n": ordinal,
            "row": {"id": K, "body": body, "updated_at": stamp}
        }]);
        self.verdict(writer, el).await
    }

    async fn delete(&self, writer: &str, lsn: &str, stamp: &str) -> String {
        let el = serde_json::json!([{"i": 1, "t": "notes", "op": "delete", "e": 1, "l": lsn, "n": 0, "k": K, "ts": stamp}]);
        self.verdict(writer, el).await
    }

    async fn verdict(&self, writer: &str, el: serde_json::Value) -> String {
        let out: serde_json::Value = self
            .c
            .query_one("SELECT public.centrovision_sync_apply($1::text::jsonb, $2)::jsonb::text", &[&el.to_string(), &writer])
            .await
            .expect("apply")
            .get::<_, String>(0)
            .parse()
            .unwrap();
        if out["applied"].as_array().unwrap().len() == 1 {
            "applied".into()
        } else if out["kept"].as_array().unwrap().len() == 1 {
            "kept".into()
        } else {
            format!("rejected {}", out["rejected"])
        }
    }

    async fn body(&self) -> Option<String> {
        self.c.query_opt("SELECT body FROM notes WHERE id = $1::text::uuid", &[&K]).await.unwrap().map(|r| r.get(0))
    }

    async fn conflicts(&self) -> i64 {
        self.c.query_one("SELECT count(*) FROM centrovision_sync.conflict", &[]).await.unwrap().get(0)
    }
}

#[tokio::test]
async fn one_writers_changes_apply_in_commit_order_whatever_their_stamps() {
    let up = Up::new("rule_order").await;
    assert_eq!(up.put("clinic-a", "0/100", 0, "first", "2026-01-01T10:00:00Z").await, "applied");
    assert_eq!(up.put("clinic-a", "0/200", 0, "second, older stamp", "2026-01-01T09:00:00Z").await, "applied");
    assert_eq!(up.body().await.as_deref(), Some("second, older stamp"));
    // a re-send of the first is a no-op, not a conflict
    assert_eq!(up.put("clinic-a", "0/100", 0, "first", "2026-01-01T10:00:00Z").await, "kept");
    // inside one transaction, the ordinal orders
    assert_eq!(up.put("clinic-a", "0/200", 3, "same txn, later statement", "2026-01-01T08:00:00Z").await, "applied");
    assert_eq!(up.body().await.as_deref(), Some("same txn, later statement"));
    assert_eq!(up.conflicts().await, 0);
}

#[tokio::test]
async fn between_writers_the_later_stamp_wins_and_the_loser_is_logged() {
    let up = Up::new("rule_stamp").await;
    assert_eq!(up.put("clinic-a", "0/100", 0, "a", "2026-01-01T10:00:00Z").await, "applied");
    assert_eq!(up.put("clinic-b", "0/900", 0, "b older", "2026-01-01T09:59:59Z").await, "kept");
    assert_eq!(up.body().await.as_deref(), Some("a"));
    let (winner, loser, rule, image): (String, String, String, String) = {
        let r =
            up.c.query_one("SELECT winner_writer, loser_writer, rule, loser_image->>'body' FROM centrovision_sync.conflict", &[])
                .await
                .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        (winner.as_str(), loser.as_str(), rule.as_str(), image.as_str()),
        ("clinic-a", "clinic-b", "later updated_at wins", "b older")
    );
    assert_eq!(up.put("clinic-b", "0/901", 0, "b newer", "2026-01-01T10:00:01Z").await, "applied");
    assert_eq!(up.body().await.as_deref(), Some("b newer"));
}

#[tokio::test]
async fn equal_stamps_go_to_the_higher_writer_id_in_either_order() {
    for (first, second) in [("clinic-a", "clinic-b"), ("clinic-b", "clinic-a")] {
        let up = Up::new("rule_tie").await;
        up.put(first, "0/100", 0, first, "2026-01-01T10:00:00Z").await;
        up.put(second, "0/100", 0, second, "2026-01-01T10:00:00Z").await;
        assert_eq!(up.body().await.as_deref(), Some("clinic-b"), "{first} then {second}");
    }
}

#[tokio::test]
async fn a_delete_is_a_version_and_an_older_edit_never_brings_the_row_back() {
    let up = Up::new("rule_delete").await;
    up.put("clinic-a", "0/100", 0, "a", "2026-01-01T10:00:00Z").await;
    assert_eq!(up.delete("clinic-b", "0/50", "2026-01-01T11:00:00Z").await, "applied");
    assert_eq!(up.body().await, None);
    assert_eq!(up.put("clinic-a", "0/200", 0, "older edit", "2026-01-01T10:30:00Z").await, "kept");
    assert_eq!(up.body().await, None, "the tombstone won");
    assert_eq!(up.put("clinic-a", "0/300", 0, "later edit", "2026-01-01T11:30:00Z").await, "applied");
    assert_eq!(up.body().await.as_deref(), Some("later edit"), "a later edit may recreate it");
}

#[tokio::test]
async fn a_stamp_too_far_ahead_counts_as_the_servers_now() {
    let up = Up::new("rule_clamp").await;
    let el = serde_json::json!([{"i": 5, "t": "notes", "op": "upsert", "e": 1, "l": "0/1", "n": 0,
        "row": {"id": K, "body": "fast clock", "updated_at": "2099-01-01T00:00:00Z"}}]);
    let out: String =
        up.c.query_one("SELECT public.centrovision_sync_apply($1::text::jsonb, 'clinic-a')::text", &[&el.to_string()])
            .await
            .unwrap()
            .get(0);
    assert!(out.contains(r#""clamped": [5]"#), "{out}");
    let ahead: bool =
        up.c.query_one("SELECT stamp > now() + interval '1 minute' FROM centrovision_sync.row_version", &[]).await.unwrap().get(0);
    assert!(!ahead, "the recorded stamp is the server's clock");
    // a normal edit from another writer a moment later wins
    let now: String = up.c.query_one("SELECT (now() + interval '1 second')::text", &[]).await.unwrap().get(0);
    assert_eq!(up.put("clinic-b", "0/1", 0, "b", &now).await, "applied");
}

#[tokio::test]
async fn the_cloud_apps_writes_are_versions_of_their_own_writer() {
    let up = Up::new("rule_cloud").await;
    up.c.batch_execute(&format!("INSERT INTO notes (id, body, updated_at) VALUES ('{K}', 'cloud', '2026-01-01T10:00:00Z')")).await.unwrap();
    let w: String = up.c.query_one("SELECT writer FROM centrovision_sync.row_version", &[]).await.unwrap().get(0);
    assert!(w.starts_with("cloud:"), "{w}");
    assert_eq!(up.put("clinic-a", "0/1", 0, "older clinic edit", "2026-01-01T09:00:00Z").await, "kept");
    up.c.batch_execute(&format!("DELETE FROM notes WHERE id = '{K}'")).await.unwrap();
    let deleted: bool = up.c.query_one("SELECT deleted FROM centrovision_sync.row_version", &[]).await.unwrap().get(0);
    assert!(deleted, "a cloud delete leaves a tombstone");
}

#[tokio::test]
async fn an_older_service_gets_a_clear_error_instead_of_writing() {
    let up = Up::new("rule_old").await;
    let e = up.c.query_one("SELECT public.centrovision_sync_apply('[]'::jsonb)", &[]).await.expect_err("contract 2's call is refused");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("too old"), "{}", db.message());
}

#[tokio::test]
async fn the_feed_returns_other_writers_versions_once_and_never_the_callers_own() {
    let up = Up::new("rule_feed").await;
    up.put("clinic-a", "0/100", 0, "a", "2026-01-01T10:00:00Z").await;
    let feed = async |writer: &str, prev: Option<String>| -> serde_json::Value {
        let t: String =
            up.c.query_one("SELECT public.centrovision_sync_changes($1, 'public', '{notes}', $2, NULL, 0, 100)::text", &[&writer, &prev])
                .await
                .unwrap()
                .get(0);
        serde_json::from_str(&t).unwrap()
    };
    let own = feed("clinic-a", None).await;
    assert_eq!(own["changes"].as_array().unwrap().len(), 0, "{own}");
    assert_eq!(own["progress"]["lsn"], "0/100");
    let b = feed("clinic-b", None).await;
    assert_eq!(b["changes"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["changes"][0]["row"]["body"], "a");
    let next = feed("clinic-b", Some(b["target"].as_str().unwrap().to_string())).await;
    assert_eq!(next["changes"].as_array().unwrap().len(), 0, "nothing new since: {next}");
    up.delete("clinic-a", "0/200", "2026-01-01T11:00:00Z").await;
    let after = feed("clinic-b", Some(b["target"].as_str().unwrap().to_string())).await;
    assert_eq!(after["changes"][0]["op"], "delete", "{after}");
}

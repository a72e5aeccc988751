//! The bad-input catalogue, continued (see `bad_input.rs` for config files,
//! credentials, unsyncable tables; `rest_mode.rs` for HTTP faults on the push
//! path; `up_path.rs` for a column added mid-stream): each entry gets a clear,
//! specific error or a clean conversion, and never loses data.
//!
//! - identifiers that need quoting (accents, spaces, embedded double quotes,
//!   upper case, reserved words as table and column names), both directions,
//!   both modes;
//! - a column whose type differs between the two sides;
//! - a column present on one side only, on the down path;
//! - rows of several MB (text and bytea), both directions, both modes;
//! - an upstream GET that answers malformed JSON (down path, REST);
//! - real pgoutput messages, corrupted by hand.

use crate::both_modes;
use crate::support;

use std::time::Duration;

use centrovision_sync::pgoutput::{decode, decode_frame};
use support::postgrest::Fault;
use support::sync::{Mode, Pair, kill9};
use support::{Cluster, TestDb, wait_for};

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.connect().await.query_one(sql, &[]).await.unwrap().get(0)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Every row of a table (any name), as JSON ordered by id.
async fn rows(db: &TestDb, table: &str) -> String {
    let sql = format!("SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]')::text FROM {} t", quote_ident(table));
    db.connect().await.query_one(sql.as_str(), &[]).await.unwrap().get(0)
}

async fn assert_same(pair: &Pair, tables: &[&str]) {
    for t in tables {
        let (l, u) = (rows(&pair.local, t).await, rows(&pair.upstream, t).await);
        assert_eq!(l, u, "table {t:?} differs:\n{}", support::sync::diff_rows(&l, &u));
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// Identifiers that need quoting
// ---------------------------------------------------------------------------

/// Accents, a space and an embedded double quote; upper case; a reserved
/// word with columns named by a reserved word and with a space; characters
/// that mean something in a URL (`%`, `?`, `#`, `/`: the PostgREST path must
/// percent-encode them).
const ODD_TABLES: [&str; 4] = ["Clínica Ñ \"x\"", "Pacientes", "order", "tasa 10% ¿a/b?#c"];

const ODD_SCHEMA: &str = r#"
CREATE TABLE "Clínica Ñ ""x""" (
    id uuid PRIMARY KEY,
    "Nombre Completo" text,
    "a""b" integer,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "Pacientes" (
    id uuid PRIMARY KEY,
    "Nombre" text,
    "FechaNacimiento" date,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "order" (
    id uuid PRIMARY KEY,
    "select" text,
    "first name" text,
    "from" integer,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE "tasa 10% ¿a/b?#c" (
    id uuid PRIMARY KEY,
    "valor %" numeric,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

async fn identifiers_that_need_quoting_sync_both_ways(mode: Mode) {
    let mut pair = Pair::new("odd_idents", mode).await;
    for db in [&pair.local, &pair.upstream] {
        db.connect().await.batch_execute(ODD_SCHEMA).await.unwrap();
    }
    pair.tables = ODD_TABLES.iter().map(|s| s.to_string()).collect();
    pair.write_config();
    pair.init().await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    // Up: one row per table written locally.
    local
        .batch_execute(
            r#"INSERT INTO "Clínica Ñ ""x""" (id, "Nombre Completo", "a""b") VALUES ('00000000-0000-0000-0000-0000000000a1', 'Ñandú "el" Clínico', 1);
               INSERT INTO "Pacientes" (id, "Nombre", "FechaNacimiento") VALUES ('00000000-0000-0000-0000-0000000000a2', 'Ana', '1990-05-06');
               INSERT INTO "order" (id, "select", "first name", "from") VALUES ('00000000-0000-0000-0000-0000000000a3', 'SELECT * FROM x;', 'Ana María', 7);
               INSERT INTO "tasa 10% ¿a/b?#c" (id, "valor %") VALUES ('00000000-0000-0000-0000-0000000000a4', 10.5);"#,
        )
        .await
        .unwrap();
    // Down: one row per table written upstream.
    up.batch_execute(
        r#"INSERT INTO "Clínica Ñ ""x""" (id, "Nombre Completo", "a""b") VALUES ('00000000-0000-0000-0000-0000000000b1', 'Upstream ü', 2);
           INSERT INTO "Pacientes" (id, "Nombre", "FechaNacimiento") VALUES ('00000000-0000-0000-0000-0000000000b2', 'Beto', '2001-02-03');
           INSERT INTO "order" (id, "select", "first name", "from") VALUES ('00000000-0000-0000-0000-0000000000b3', 'DROP TABLE "order"; --', 'José', 8);
           INSERT INTO "tasa 10% ¿a/b?#c" (id, "valor %") VALUES ('00000000-0000-0000-0000-0000000000b4', 20);"#,
    )
    .await
    .unwrap();
    pair.once().await;
    assert_same(&pair, &ODD_TABLES).await;
    for t in ODD_TABLES {
        assert_eq!(count(&pair.upstream, &format!("SELECT count(*) FROM {}", quote_ident(t))).await, 2, "{t}");
    }
    // Updates both ways, on the rows that came from the other side.
    local
        .batch_execute(
            r#"UPDATE "Clínica Ñ ""x""" SET "a""b" = 20, updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000b1';
               UPDATE "order" SET "first name" = 'José Luis', updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000b3';
               DELETE FROM "Pacientes" WHERE id = '00000000-0000-0000-0000-0000000000b2';"#,
        )
        .await
        .unwrap();
    up.batch_execute(
        r#"UPDATE "Pacientes" SET "Nombre" = 'Ana (nube)', updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000a2';
           UPDATE "order" SET "select" = 'still text', updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000a3';
           UPDATE "tasa 10% ¿a/b?#c" SET "valor %" = 11, updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000a4';"#,
    )
    .await
    .unwrap();
    pair.once().await;
    assert_same(&pair, &ODD_TABLES).await;
    let v: i32 = up
        .query_one(r#"SELECT "a""b" FROM "Clínica Ñ ""x""" WHERE id = '00000000-0000-0000-0000-0000000000b1'"#, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 20);
    let s: String =
        local.query_one(r#"SELECT "select" FROM "order" WHERE id = '00000000-0000-0000-0000-0000000000a3'"#, &[]).await.unwrap().get(0);
    assert_eq!(s, "still text");
    assert_eq!(count(&pair.upstream, r#"SELECT count(*) FROM "Pacientes""#).await, 1, "the local delete reached upstream");
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending WHERE parked_at IS NOT NULL").await, 0);
    // `status` names the tables as configured.
    let st = pair.ok(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let names: Vec<&str> = st["tables"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap()).collect();
    assert_eq!(names, ODD_TABLES);
}

// ---------------------------------------------------------------------------
// Column types that differ between the sides
// ---------------------------------------------------------------------------

/// Local `price numeric(12,2)`, upstream `price integer`: a local price such
/// as 12.50 cannot become an integer. The row is rejected upstream and parked
/// locally with the SQLSTATE and PostgreSQL's message naming the value; other
/// rows and tables flow; nothing upstream is touched. Down, an integer comes
/// into numeric cleanly.
async fn a_numeric_price_into_an_integer_column_is_parked_with_the_reason(mode: Mode) {
    let pair = Pair::new("type_int", mode).await;
    pair.upstream.connect().await.batch_execute("ALTER TABLE services ALTER COLUMN price TYPE integer USING price::integer").await.unwrap();
    pair.init().await;
    let local = pair.local.connect().await;
    local
        .batch_execute(
            "INSERT INTO services (id, name, price) VALUES ('00000000-0000-0000-0000-0000000000c1', 'consulta', 12.50);
             INSERT INTO branches (name) VALUES ('unrelated table still syncs');",
        )
        .await
        .unwrap();
    pair.upstream
        .connect()
        .await
        .batch_execute("INSERT INTO services (id, name, price) VALUES ('00000000-0000-0000-0000-0000000000c2', 'examen', 7)")
        .await
        .unwrap();
    let out = pair.once().await;
    let err = stderr(&out);
    assert!(err.contains("parked"), "once should say some changes are parked:\n{err}");
    let (error, parked): (String, i64) = {
        let r = pair
            .local
            .journal()
            .connect()
            .await
            .query_one("SELECT max(error), count(*) FROM _sync_pending WHERE parked_at IS NOT NULL AND NOT synced", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(parked, 1);
    assert!(error.contains("22P02") && error.contains("invalid input syntax for type integer") && error.contains("12.50"), "{error}");
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM services WHERE name = 'consulta'").await, 0);
    assert_eq!(count(&pair.upstream, "SELECT count(*) FROM branches").await, 1, "other tables flow");
    // Down: integer 7 arrives as numeric 7.00.
    let price: String = local.query_one("SELECT price::text FROM services WHERE name = 'examen'", &[]).await.unwrap().get(0);
    assert_eq!(price, "7.00");
    // The parked row is kept, and `status` shows it.
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'consulta'").await, 1);
    let st: serde_json::Value = serde_json::from_slice(&pair.ok(&["status", "--json"]).await.stdout).unwrap();
    assert_eq!(st["parked"], 1, "{st}");
}

/// Local `price numeric(12,2)`, upstream `price text`: up, the number is
/// stored as its text (clean conversion). Down, a text that is not a number
/// cannot be applied: that one row is parked with the SQLSTATE and the
/// reason (shown by `status`, never its value in the log), the rest of the
/// page arrives, and once the value is corrected upstream the row arrives
/// and the entry is cleared.
async fn a_text_price_that_is_not_a_number_is_parked_clearly_and_arrives_once_fixed(mode: Mode) {
    let pair = Pair::new("type_text", mode).await;
    let up = pair.upstream.connect().await;
    up.batch_execute("ALTER TABLE services ALTER COLUMN price TYPE text").await.unwrap();
    pair.init().await;
    let local = pair.local.connect().await;
    local.batch_execute("INSERT INTO services (name, price) VALUES ('local', 12.50)").await.unwrap();
    pair.once().await;
    let p: String = up.query_one("SELECT price FROM services WHERE name = 'local'", &[]).await.unwrap().get(0);
    assert_eq!(p, "12.50", "numeric arrives as its text");

    up.batch_execute(
        "INSERT INTO services (id, name, price) VALUES ('00000000-0000-0000-0000-0000000000d1', 'gratis', 'gratis');
         INSERT INTO services (id, name, price) VALUES ('00000000-0000-0000-0000-0000000000d2', 'fine', '5');",
    )
    .await
    .unwrap();
    let out = pair.exec(&["once"], &[]).await;
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("services") && err.contains("22P02"), "{err}");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'gratis'").await, 0, "the bad row is not applied");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services WHERE name = 'fine'").await, 1, "the rest of the page arrives");
    let parked: String = local
        .query_one("SELECT error FROM _sync_down_parked WHERE record_id = '00000000-0000-0000-0000-0000000000d1'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(parked.contains("invalid input syntax for type numeric"), "{parked}");
    let st: serde_json::Value = serde_json::from_slice(&pair.exec(&["status", "--json"], &[]).await.stdout).unwrap();
    assert_eq!(st["parked_down"], 1, "{st}");

    up.batch_execute("UPDATE services SET price = '0' WHERE name = 'gratis'").await.unwrap();
    pair.once().await;
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 3, "nothing lost once the value is fixed");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM _sync_down_parked").await, 0, "the entry is cleared once it applies");
    let p: String = local.query_one("SELECT price::text FROM services WHERE name = 'fine'", &[]).await.unwrap().get(0);
    assert_eq!(p, "5.00");
}

/// The reason a row is parked must stay where the operator looks (`status`,
/// `_sync_metadata.last_error`): a later successful down-path page of the
/// same table must not clear it (it did, until the down path cleared only
/// its own errors).
async fn the_reason_for_a_parked_row_stays_visible_in_status(mode: Mode) {
    let pair = Pair::new("parked_reason", mode).await;
    pair.upstream.connect().await.batch_execute("ALTER TABLE services ALTER COLUMN price TYPE integer USING price::integer").await.unwrap();
    pair.init().await;
    pair.local.connect().await.batch_execute("INSERT INTO services (name, price) VALUES ('consulta', 12.50)").await.unwrap();
    pair.once().await;
    let shown = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let before = shown(pair.ok(&["status"]).await);
    assert!(before.contains("22P02") || before.contains("invalid input syntax"), "status right after the rejection:\n{before}");
    // Anything at all comes down for the same table.
    pair.upstream.connect().await.batch_execute("INSERT INTO services (name, price) VALUES ('examen', 7)").await.unwrap();
    pair.once().await;
    let after = shown(pair.ok(&["status"]).await);
    assert!(
        after.contains("22P02") || after.contains("invalid input syntax"),
        "the row is still parked, but status no longer says why:\n{after}"
    );
}

mod the_reason_for_a_parked_row_stays_visible_in_status {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::the_reason_for_a_parked_row_stays_visible_in_status(crate::support::sync::Mode::Postgres).await
    }
}

// ---------------------------------------------------------------------------
// A column on one side only (down path)
// ---------------------------------------------------------------------------

/// `branches.local_note` exists only locally, `branches.cloud_note` only
/// upstream. Down-path updates leave the local-only column alone (its value
/// stays), ignore the upstream-only one, and the service says so once per
/// table, not once per cycle.
async fn a_column_on_one_side_only_is_left_alone_and_reported_once(mode: Mode) {
    const ID: &str = "00000000-0000-0000-0000-0000000000e1";
    let pair = Pair::new("one_side_col", mode).await;
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local.batch_execute("ALTER TABLE branches ADD COLUMN local_note text").await.unwrap();
    up.batch_execute("ALTER TABLE branches ADD COLUMN cloud_note text").await.unwrap();
    // The same branch on both sides before the slot exists (not captured).
    local
        .batch_execute(&format!("INSERT INTO branches (id, name, updated_at, local_note) VALUES ('{ID}', 'v1', '2020-01-01', 'keep me')"))
        .await
        .unwrap();
    up.batch_execute(&format!("INSERT INTO branches (id, name, updated_at, cloud_note) VALUES ('{ID}', 'v1', '2020-01-01', 'cloud only')"))
        .await
        .unwrap();
    pair.init().await;
    let mut child = pair.spawn_run(&[]);
    for v in ["v2", "v3", "v4"] {
        up.batch_execute(&format!("UPDATE branches SET name = '{v}' WHERE id = '{ID}'")).await.unwrap();
        wait_for(&format!("{v} down"), Duration::from_secs(60), || async {
            let c = pair.local.connect().await;
            let name: String = c.query_one(&format!("SELECT name FROM branches WHERE id = '{ID}'"), &[]).await.unwrap().get(0);
            (name == v).then_some(())
        })
        .await;
    }
    kill9(&mut child);
    let note: Option<String> = local.query_one(&format!("SELECT local_note FROM branches WHERE id = '{ID}'"), &[]).await.unwrap().get(0);
    assert_eq!(note.as_deref(), Some("keep me"), "the local-only column lost its value");
    let cloud: String = up.query_one(&format!("SELECT cloud_note FROM branches WHERE id = '{ID}'"), &[]).await.unwrap().get(0);
    assert_eq!(cloud, "cloud only");
    let log = pair.run_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("columns present on one side only")).collect();
    assert_eq!(lines.len(), 1, "reported once per table, not per cycle:\n{}", lines.join("\n"));
    assert!(lines[0].contains("local_note") && lines[0].contains("cloud_note") && lines[0].contains("branches"), "{}", lines[0]);
    // Nothing was journaled by the down path (the updates came from upstream).
    assert_eq!(count(&pair.local.journal(), "SELECT count(*) FROM _sync_pending").await, 0);
}

// ---------------------------------------------------------------------------
// Rows of several MB
// ---------------------------------------------------------------------------

/// 5 MB of incompressible text in `notes` and 5 MB of bytea in `photo`, one
/// row written on each side, then an update that leaves both big values
/// unchanged (so the WAL does not carry them).
async fn rows_of_several_megabytes_sync_both_ways(mode: Mode) {
    let pair = Pair::new("big_rows", mode).await;
    pair.init().await;
    let big = |id: &str, name: &str| {
        format!(
            "INSERT INTO patients (id, full_name, notes, photo) VALUES ('{id}', '{name}',
               (SELECT string_agg(md5(g::text || '{name}'), '') FROM generate_series(1, 163840) g),
               (SELECT decode(string_agg(md5(g::text || '{name}x'), ''), 'hex') FROM generate_series(1, 327680) g))"
        )
    };
    let local = pair.local.connect().await;
    let up = pair.upstream.connect().await;
    local.batch_execute(&big("00000000-0000-0000-0000-0000000000f1", "local")).await.unwrap();
    up.batch_execute(&big("00000000-0000-0000-0000-0000000000f2", "cloud")).await.unwrap();
    pair.once().await;
    let digest = "SELECT string_agg(format('%s %s %s %s %s', id, length(notes), md5(notes), length(photo), md5(photo)), '; ' ORDER BY id) FROM patients";
    let l: String = local.query_one(digest, &[]).await.unwrap().get(0);
    let u: String = up.query_one(digest, &[]).await.unwrap().get(0);
    assert_eq!(l, u);
    assert!(l.contains(" 5242880 ") && l.matches(" 5242880 ").count() == 4, "two rows of 5 MB text + 5 MB bytea: {l}");
    // Updates that leave the big values alone, on both sides.
    local.batch_execute("UPDATE patients SET phone = '1', updated_at = now() WHERE full_name = 'cloud'").await.unwrap();
    up.batch_execute("UPDATE patients SET phone = '2' WHERE full_name = 'local'").await.unwrap();
    pair.once().await;
    let l: String = local.query_one(digest, &[]).await.unwrap().get(0);
    let u: String = up.query_one(digest, &[]).await.unwrap().get(0);
    assert_eq!(l, u);
    assert_eq!(l.matches(" 5242880 ").count(), 4, "{l}");
    pair.assert_converged().await;
}

// ---------------------------------------------------------------------------
// Malformed JSON on a GET (down path)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_get_answering_malformed_json_is_retried_without_loss() {
    let pair = Pair::new("get_malformed", Mode::Rest).await;
    pair.init().await;
    pair.upstream
        .connect()
        .await
        .batch_execute("INSERT INTO services (name, price) SELECT 'cloud ' || g, g FROM generate_series(1, 40) g")
        .await
        .unwrap();
    let s = pair.standin();
    // `once`: a clear, transient error; nothing applied from the bad answer.
    s.faults().push("/rest/v1/rpc/centrovision_sync_changes", Fault::MalformedJson);
    let o = pair.exec(&["once"], &[]).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not JSON") && err.contains("change feed") && err.contains("services"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 0);
    let wm: Option<String> = pair
        .local
        .connect()
        .await
        .query_one("SELECT last_sync_from_supabase::text FROM _sync_metadata WHERE table_name = 'services'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wm, None, "the watermark must not move past a page that was not applied");
    // `run`: retried with backoff while the portal answers, then everything arrives.
    s.faults().set_persistent("/rest/v1/rpc/centrovision_sync_changes", Some(Fault::MalformedJson));
    let before = s.requests("/rest/v1/rpc/centrovision_sync_changes");
    let mut child = pair.spawn_run(&[]);
    wait_for("two more malformed answers", Duration::from_secs(60), || async {
        (s.requests("/rest/v1/rpc/centrovision_sync_changes") >= before + 2).then_some(())
    })
    .await;
    s.faults().set_persistent("/rest/v1/rpc/centrovision_sync_changes", None);
    pair.wait_converged(Duration::from_secs(60)).await;
    kill9(&mut child);
    assert_eq!(count(&pair.local, "SELECT count(*) FROM services").await, 40);
    assert!(pair.run_log().contains("not JSON"), "the run log should say why it retried");
}

// ---------------------------------------------------------------------------
// Corrupted pgoutput messages
// ---------------------------------------------------------------------------

/// Real pgoutput messages from the server (`pg_logical_slot_peek_binary_changes`),
/// one of each kind the service sees, keyed by their type byte.
async fn real_messages() -> Vec<Vec<u8>> {
    let db = Cluster::shared().create_database("pgoutput_real").await;
    let c = db.connect().await;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text, note text);
         ALTER TABLE t REPLICA IDENTITY FULL;
         CREATE PUBLICATION p FOR TABLE t;",
    )
    .await
    .unwrap();
    // Each its own transaction (a slot cannot be created after writes in one).
    for sql in [
        "SELECT pg_create_logical_replication_slot('s_' || current_database(), 'pgoutput')",
        "INSERT INTO t VALUES (1, 'uno', 'ñandú')",
        "UPDATE t SET name = 'dos' WHERE id = 1",
        "DELETE FROM t WHERE id = 1",
        "TRUNCATE t",
        "SELECT pg_logical_emit_message(true, 'centrovision', 'hola')",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s_' || current_database(), NULL, NULL,
                'proto_version', '1', 'publication_names', 'p', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    c.batch_execute("SELECT pg_drop_replication_slot('s_' || current_database())").await.unwrap();
    rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect()
}

fn first(msgs: &[Vec<u8>], tag: u8) -> Vec<u8> {
    msgs.iter().find(|m| m.first() == Some(&tag)).unwrap_or_else(|| panic!("no {:?} message", tag as char)).clone()
}

fn err_of(buf: &[u8]) -> String {
    match decode(buf) {
        Ok(m) => panic!("corrupted message decoded as {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in the error: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_real_pgoutput_messages_are_rejected_naming_the_message_and_field() {
    let msgs = real_messages().await;
    // The originals decode.
    for m in &msgs {
        decode(m).unwrap_or_else(|e| panic!("a real message did not decode ({e}): {m:?}"));
    }
    let tags: Vec<char> = msgs.iter().map(|m| m[0] as char).collect();
    for t in ['B', 'R', 'I', 'U', 'D', 'T', 'M', 'C'] {
        assert!(tags.contains(&t), "no {t} message among {tags:?}");
    }

    // Insert: I, relation OID (4), 'N', column count (2), then 't', len (4), "1"...
    let insert = first(&msgs, b'I');
    let mut m = insert.clone();
    m.truncate(insert.len() - 3);
    assert_names(&err_of(&m), &["Truncated pgoutput message", "column value", "an Insert message"]);
    let mut m = insert.clone();
    m[5] = b'X';
    assert_names(&err_of(&m), &["Unexpected tuple marker 0x58 ('X')", "an Insert message", "N (new tuple)"]);
    let mut m = insert.clone();
    assert_eq!(m[8], b't', "first value is text: {insert:?}");
    m[8] = b'z';
    assert_names(&err_of(&m), &["Unknown tuple value kind 0x7A ('z')", "an Insert message"]);
    let mut m = insert.clone();
    m[9..13].copy_from_slice(&(-5i32).to_be_bytes());
    assert_names(&err_of(&m), &["column value length", "an Insert message", "negative (-5)"]);
    let mut m = insert.clone();
    m[6..8].copy_from_slice(&i16::MAX.to_be_bytes());
    assert_names(&err_of(&m), &["Truncated", "an Insert message"]);

    // Relation: R, OID (4), "public\0", "t\0", identity, column count, columns...
    let relation = first(&msgs, b'R');
    assert_eq!(&relation[5..12], b"public\0", "{relation:?}");
    let mut m = relation.clone();
    m[12] = 0xFF;
    assert_names(&err_of(&m), &["relation name", "a Relation message", "not valid UTF-8"]);
    let mut m = relation.clone();
    m.truncate(9);
    assert_names(&err_of(&m), &["relation namespace", "a Relation message", "no terminating NUL"]);
    let mut m = relation.clone();
    m.truncate(relation.len() - 2);
    assert_names(&err_of(&m), &["Truncated pgoutput message", "column type modifier", "a Relation message"]);

    // Update with the full old row: U, OID, 'O', old tuple, 'N', new tuple.
    let update = first(&msgs, b'U');
    let mut m = update.clone();
    assert_eq!(m[5], b'O', "REPLICA IDENTITY FULL sends the old row: {update:?}");
    m[5] = b'Q';
    assert_names(&err_of(&m), &["Unexpected tuple marker 0x51 ('Q')", "an Update message", "O (old tuple)"]);

    let delete = first(&msgs, b'D');
    assert_names(&err_of(&delete[..5]), &["needed 1 more byte", "old tuple marker", "a Delete message"]);

    let mut commit = first(&msgs, b'C');
    commit.push(0);
    assert_names(&err_of(&commit), &["Trailing bytes", "a Commit message", "1 byte left over"]);

    let begin = first(&msgs, b'B');
    assert_names(&err_of(&begin[..10]), &["needed 7 more bytes", "commit timestamp", "a Begin message"]);

    let mut truncate = first(&msgs, b'T');
    truncate[1..5].copy_from_slice(&(-1i32).to_be_bytes());
    assert_names(&err_of(&truncate), &["relation count", "a Truncate message", "negative (-1)"]);

    let message = first(&msgs, b'M');
    let mut m = message.clone();
    let len_at = message.len() - 4 - 4; // content "hola" after its Int32 length
    m[len_at..len_at + 4].copy_from_slice(&1000i32.to_be_bytes());
    assert_names(&err_of(&m), &["content", "a logical decoding message", "needed 996 more bytes"]);

    // A protocol-version-2 streaming message.
    let mut m = insert.clone();
    m[0] = b'S';
    assert_names(&err_of(&m), &["Unknown pgoutput message type 0x53 ('S')", "protocol version 1"]);

    // The frame around it: XLogData header cut short.
    let mut frame = vec![b'w'];
    frame.extend_from_slice(&0x0100_0000u64.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0]);
    let e = decode_frame(&frame).unwrap_err().to_string();
    assert_names(&e, &["Truncated replication frame", "WAL end", "an XLogData frame"]);
    let mut frame = vec![b'w'];
    frame.extend_from_slice(&[0; 24]);
    frame.extend_from_slice(&insert[..7]);
    match decode_frame(&frame).unwrap() {
        centrovision_sync::pgoutput::Frame::XLogData { data, .. } => {
            assert_names(&decode(data).unwrap_err().to_string(), &["column count", "an Insert message"]);
        }
        other => panic!("{other:?}"),
    }
}

both_modes!(
    identifiers_that_need_quoting_sync_both_ways,
    a_numeric_price_into_an_integer_column_is_parked_with_the_reason,
    a_text_price_that_is_not_a_number_is_parked_clearly_and_arrives_once_fixed,
    a_column_on_one_side_only_is_left_alone_and_reported_once,
    rows_of_several_megabytes_sync_both_ways,
);

//! Every PostgreSQL type a clinic is likely to use, both ways, in both modes,
//! compared value for value as text.
//!
//! A value crosses as text (pgoutput up, `to_jsonb` down) and is read back
//! by the column type's input function, so each type whose text form has a
//! corner (infinities, NaN, empty ranges, NULL array elements, quotes in an
//! enum label, 39 significant digits) is a way to lose or change data
//! silently. The table has a mixed-case quoted name, a domain, an enum with
//! a quote in a label, a generated column, and columns named `x`, `r`, `t`
//! and `row`, the aliases generated SQL is most tempted to use, so an alias
//! that collides with a user column shows up here as a wrong value or a
//! failed download.
//!
//! `money` is read and printed under `lc_monetary`: both databases here
//! live on one cluster, so they agree; a clinic whose `lc_monetary` differs
//! from its Supabase project's would see amounts re-read in the other
//! currency format (README, "Types").

use crate::both_modes;
use crate::support;

use support::TestDb;
use support::sync::{Mode, Pair};

const TABLE: &str = "Estudios Mixtos";

const SCHEMA: &str = r#"
CREATE TYPE "Ánimo" AS ENUM ('it''s fine', 'con "comillas"', 'plain');
CREATE DOMAIN "Positivo" AS integer CHECK (VALUE > 0);
CREATE TABLE "Estudios Mixtos" (
    id uuid PRIMARY KEY,
    iv interval,
    m money,
    ip inet,
    net cidr,
    mac macaddr,
    ir int4range,
    tr tsrange,
    tzr tstzrange,
    tsv tsvector,
    pt point,
    doc xml,
    big numeric,
    f8 float8,
    f4 float4,
    ts timestamp,
    tstz timestamptz,
    ttz timetz,
    b bit(4),
    vb varbit,
    ia int[],
    ta text[],
    ja jsonb[],
    d "Positivo",
    e "Ánimo",
    x text,
    r integer,
    t text,
    "row" text,
    "Mixed Case" text,
    gen integer GENERATED ALWAYS AS (coalesce(r, 0) * 2 + length(coalesce(x, ''))) STORED,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

/// Every column, compared as `::text` (the generated one included: it must
/// come out equal without ever being written).
const COLUMNS: [&str; 31] = [
    "id",
    "iv",
    "m",
    "ip",
    "net",
    "mac",
    "ir",
    "tr",
    "tzr",
    "tsv",
    "pt",
    "doc",
    "big",
    "f8",
    "f4",
    "ts",
    "tstz",
    "ttz",
    "b",
    "vb",
    "ia",
    "ta",
    "ja",
    "d",
    "e",
    "x",
    "r",
    "t",
    "row",
    "Mixed Case",
    "gen",
];

/// Three rows with ids `…{prefix}1` to `…{prefix}3`: ordinary values, the
/// edge of each type, and all NULLs.
fn rows(prefix: char) -> String {
    format!(
        r#"INSERT INTO "Estudios Mixtos"
           (id, iv, m, ip, net, mac, ir, tr, tzr, tsv, pt, doc, big, f8, f4, ts, tstz, ttz, b, vb, ia, ta, ja, d, e, x, r, t, "row", "Mixed Case")
        VALUES
        ('00000000-0000-0000-0000-0000000000{prefix}1', '1 year 2 mons 3 days 04:05:06.789', 1234.56, '192.168.1.5/24', '10.0.0.0/8',
         '08:00:2b:01:02:03', '[1,10)', '[2026-01-01 00:00,2026-02-01 12:30)', '[2026-01-01 00:00+00,2026-03-01 00:00+05)',
         'a fat cat sat:1A,2B', '(1.5,-2.25)', '<a b="c">t&amp;u <![CDATA[x<y]]></a>',
         '123456789012345678901234567890.123456789', 'NaN', 'Infinity', 'infinity', '-infinity', '04:05:06.789+05:30',
         B'1010', B'10101', '{{1,NULL,3}}', '{{"a b",NULL,"c\"d","NULL",""}}', ARRAY['{{"k": 1, "n": 2.50}}'::jsonb, NULL, 'null'],
         5, 'it''s fine', 'equis', 7, 'te', 'fila', 'Mayúsculas'),
        ('00000000-0000-0000-0000-0000000000{prefix}2', '-1 days +02:03:04.5', -0.01, '::1', '2001:db8::/32',
         'ff:ff:ff:ff:ff:ff', 'empty', '(,)', '[2026-01-01 00:00+00,)', '', '(0,-0)', 'solo texto &lt; sin raíz',
         '-0.00000000000000000000000000000000000000123456789012345678901234567890123456789', '-Infinity', 'NaN',
         '-infinity', 'infinity', '23:59:59.999999-12', B'0000', B'', '{{{{1,2}},{{NULL,4}}}}', '{{}}', '{{}}',
         2147483647, 'con "comillas"', '', 0, '', '', ''),
        ('00000000-0000-0000-0000-0000000000{prefix}3', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#
    )
}

/// A row's id and its every column as text: `(id, [(column, value)])`.
type TextRow = (String, Vec<(String, Option<String>)>);

/// Each row's every column as text, in id order.
async fn texts(db: &TestDb) -> Vec<TextRow> {
    let list = COLUMNS.iter().map(|c| format!("{}::text", centrovision_sync::catalog::quote_ident(c))).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {list} FROM {} ORDER BY id", centrovision_sync::catalog::quote_ident(TABLE));
    let c = db.connect().await;
    let out = c.query(sql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.iter()
        .map(|row| {
            let id: String = row.get(0);
            (id, COLUMNS.iter().enumerate().map(|(i, c)| (c.to_string(), row.get::<_, Option<String>>(i))).collect())
        })
        .collect()
}

/// The rows' `row_to_json` text (JSON renderings: float and numeric as
/// written, arrays as JSON arrays).
async fn json_rows(db: &TestDb) -> Vec<String> {
    let sql = format!("SELECT row_to_json(_cvs_test)::text FROM {} _cvs_test ORDER BY id", centrovision_sync::catalog::quote_ident(TABLE));
    db.connect().await.query(sql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

/// Asserts both sides hold the same rows, value for value, naming the
/// first column that differs.
async fn assert_same_values(pair: &Pair, after: &str) {
    let (l, u) = (texts(&pair.local).await, texts(&pair.upstream).await);
    let ids = |v: &[TextRow]| v.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&l), ids(&u), "{after}: the same rows on both sides (local, upstream)");
    for ((id, lc), (_, uc)) in l.iter().zip(&u) {
        for ((col, lv), (_, uv)) in lc.iter().zip(uc) {
            assert_eq!(lv, uv, "{after}: row {id}, column {col:?}: local {lv:?}, upstream {uv:?}");
        }
    }
    assert_eq!(json_rows(&pair.local).await, json_rows(&pair.upstream).await, "{after}: row_to_json renderings");
}

async fn every_type_survives_the_round_trip_value_for_value(mode: Mode) {
    let mut pair = Pair::new("type_trip", mode).await;
    for db in [&pair.local, &pair.upstream] {
        db.connect().await.batch_execute(SCHEMA).await.expect("type round trip schema");
    }
    pair.tables = vec![TABLE.into()];
    pair.write_config();
    // Rows the clinic had before `init`, uploaded by `init --upload-existing`.
    pair.local.connect().await.batch_execute(&rows('c')).await.expect("existing local rows");
    pair.init_with(&["--upload-existing"]).await;
    // Up: written at the clinic; down: written upstream (the cloud app).
    pair.local.connect().await.batch_execute(&rows('a')).await.expect("local rows");
    pair.upstream.connect().await.batch_execute(&rows('b')).await.expect("upstream rows");
    pair.once().await;
    assert_same_values(&pair, "inserts both ways").await;
    assert_eq!(texts(&pair.local).await.len(), 9, "three rows each way and three uploaded by init");
    // Updates both ways, each onto a row that came from the other side: the
    // edge row's values onto the ordinary one and NULLs onto the edge row.
    let copy = |to: &str, from: &str| {
        let cols = COLUMNS[1..COLUMNS.len() - 1].iter().map(|c| centrovision_sync::catalog::quote_ident(c)).collect::<Vec<_>>().join(", ");
        format!(
            r#"UPDATE "Estudios Mixtos" SET ({cols}, updated_at) = (SELECT {cols}, now() FROM "Estudios Mixtos" WHERE id = '00000000-0000-0000-0000-0000000000{from}')
               WHERE id = '00000000-0000-0000-0000-0000000000{to}'"#
        )
    };
    pair.local.connect().await.batch_execute(&copy("b1", "b2")).await.expect("local update");
    pair.local.connect().await.batch_execute(&copy("b2", "b3")).await.expect("local update");
    pair.upstream.connect().await.batch_execute(&copy("a1", "a2")).await.expect("upstream update");
    pair.upstream.connect().await.batch_execute(&copy("a2", "a3")).await.expect("upstream update");
    pair.once().await;
    assert_same_values(&pair, "updates both ways").await;
    let b1 = texts(&pair.local).await.into_iter().find(|r| r.0.ends_with("b1")).expect("row b1");
    assert_eq!(b1.1[6].1.as_deref(), Some("empty"), "the update really carried the edge row's values");

    // An update that leaves TOASTed array values unchanged: capture fills
    // them from the local row, in the same form as pgoutput's.
    let big = "(SELECT string_agg(md5(g::text), ' ') FROM generate_series(1, 600) g)";
    let local = pair.local.connect().await;
    local
        .batch_execute(&format!(
            r#"INSERT INTO "Estudios Mixtos" (id, ta, ja, x)
               VALUES ('00000000-0000-0000-0000-0000000000f1', ARRAY[{big}, NULL, 'NULL'], ARRAY[to_jsonb({big}), 'null', NULL], 'antes')"#
        ))
        .await
        .expect("toasted row");
    pair.once().await;
    local
        .batch_execute(
            r#"UPDATE "Estudios Mixtos" SET x = 'después', updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000f1'"#,
        )
        .await
        .expect("update beside toasted values");
    pair.once().await;
    assert_same_values(&pair, "an update beside unchanged TOASTed values").await;

    // verify compares these values equal; verify --repair sends a row
    // upstream lost without a trace back up, and brings down rows written
    // upstream without a version (before enrolment: `legacy`).
    let verified = pair.exec(&["verify"], &[]).await;
    assert_eq!(verified.status.code(), Some(0), "verify of equal tables: {}", String::from_utf8_lossy(&verified.stdout));
    pair.upstream
        .connect()
        .await
        .batch_execute(&format!(
            r#"SET session_replication_role = replica;
               DELETE FROM "Estudios Mixtos" WHERE id = '00000000-0000-0000-0000-0000000000a2';
               DELETE FROM centrovision_sync.row_version WHERE table_name = 'Estudios Mixtos' AND pk = '00000000-0000-0000-0000-0000000000a2';
               {};"#,
            rows('e')
        ))
        .await
        .expect("upstream drift");
    let repaired = pair.exec(&["verify", "--repair"], &[]).await;
    assert_eq!(
        repaired.status.code(),
        Some(0),
        "verify --repair: {}\n{}",
        String::from_utf8_lossy(&repaired.stdout),
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert_same_values(&pair, "verify --repair").await;
    assert_eq!(texts(&pair.local).await.len(), 13, "the upstream-only rows came down");
}

/// A parent table named `x` and a child named `src`, with columns named like
/// every alias the service's SQL uses (local statements and the upstream
/// functions: CTEs, recordsets, table aliases).
const ALIAS_SCHEMA: &str = r#"
CREATE TABLE x (
    id uuid PRIMARY KEY,
    x text, r text, t text, "row" text, d text, s text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE src (
    id uuid PRIMARY KEY,
    x_id uuid REFERENCES x (id),
    x text, r text, t text, "row" text, d text, s text, p text, q text, u text, e text, k text,
    o text, y text, z text, c text, w text, m text, el text, gr text, rv text, src text, here text,
    lsn text, inserted text, ins text, upd text, lost text, over text, rec text, legacy text,
    _cvs_r text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

const X_COLS: [&str; 6] = ["x", "r", "t", "row", "d", "s"];
const SRC_COLS: [&str; 31] = [
    "x", "r", "t", "row", "d", "s", "p", "q", "u", "e", "k", "o", "y", "z", "c", "w", "m", "el", "gr", "rv", "src", "here", "lsn",
    "inserted", "ins", "upd", "lost", "over", "rec", "legacy", "_cvs_r",
];

/// A parent `…{tag}` in `x` and a child `…{tag}` in `src` pointing at it,
/// every column holding its own name and the tag.
fn family(tag: &str) -> String {
    let cols = |list: &[&str]| list.iter().map(|c| centrovision_sync::catalog::quote_ident(c)).collect::<Vec<_>>().join(", ");
    let vals = |list: &[&str]| list.iter().map(|c| format!("'{c} {tag}'")).collect::<Vec<_>>().join(", ");
    format!(
        "INSERT INTO x (id, {}) VALUES ('00000000-0000-0000-0000-00000000{tag}', {});
         INSERT INTO src (id, x_id, {}) VALUES ('00000000-0000-0000-0000-00000000{tag}', '00000000-0000-0000-0000-00000000{tag}', {});",
        cols(&X_COLS),
        vals(&X_COLS),
        cols(&SRC_COLS),
        vals(&SRC_COLS)
    )
}

async fn exec(db: &TestDb, sql: &str) {
    db.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn tables_and_columns_named_like_generated_aliases_sync_both_ways(mode: Mode) {
    let mut pair = Pair::new("alias_names", mode).await;
    for db in [&pair.local, &pair.upstream] {
        exec(db, ALIAS_SCHEMA).await;
    }
    pair.tables = vec!["x".into(), "src".into()];
    pair.write_config();
    // Uploaded by init.
    exec(&pair.local, &family("0000")).await;
    pair.init_with(&["--upload-existing"]).await;
    // Up and down.
    exec(&pair.local, &family("00a1")).await;
    exec(&pair.upstream, &family("00b1")).await;
    pair.once().await;
    pair.assert_converged().await;
    // A child whose parent never reached the feed (written upstream without
    // a version): the down path fetches the parent by key.
    exec(
        &pair.upstream,
        "BEGIN; SET LOCAL session_replication_role = replica;
         INSERT INTO x (id, x, r) VALUES ('00000000-0000-0000-0000-0000000000c1', 'x c1', 'r c1'); COMMIT;
         INSERT INTO src (id, x_id, x, src) VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-0000000000c1', 'x c1', 'src c1');",
    )
    .await;
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(
        support::sync::count(&pair.local, "SELECT count(*) FROM x WHERE x = 'x c1' AND r = 'r c1'").await,
        1,
        "the parent came down whole, column x as column x"
    );
    // Updates and deletes both ways.
    exec(&pair.local, "UPDATE src SET x = 'x edited', d = 'd edited', updated_at = now() WHERE id::text LIKE '%00b1'").await;
    exec(&pair.upstream, "UPDATE src SET r = 'r edited', src = 'src edited', updated_at = now() WHERE id::text LIKE '%00a1'").await;
    exec(&pair.local, "DELETE FROM src WHERE id::text LIKE '%0000'").await;
    exec(&pair.upstream, "DELETE FROM src WHERE id::text LIKE '%00c1'").await;
    pair.once().await;
    pair.assert_converged().await;
    assert_eq!(support::sync::count(&pair.upstream, "SELECT count(*) FROM src WHERE x = 'x edited' AND src = 'src b1'").await, 0);
    assert_eq!(support::sync::count(&pair.upstream, "SELECT count(*) FROM src WHERE x = 'x edited' AND d = 'd edited'").await, 1);
    assert_eq!(support::sync::count(&pair.local, "SELECT count(*) FROM src WHERE r = 'r edited' AND src = 'src edited'").await, 1);
    assert_eq!(support::sync::count(&pair.local, "SELECT count(*) FROM src").await, 2, "both deletes crossed");
    let verified = pair.exec(&["verify"], &[]).await;
    assert_eq!(verified.status.code(), Some(0), "verify: {}", String::from_utf8_lossy(&verified.stdout));
}

both_modes!(every_type_survives_the_round_trip_value_for_value, tables_and_columns_named_like_generated_aliases_sync_both_ways);

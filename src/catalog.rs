//! What the service knows about the synced tables, read from a database's
//! catalog: primary key, columns, `updated_at`, foreign keys.
//!
//! Both sides are described the same way, so the down path can intersect
//! column sets and order tables parents-first, and `doctor` can say exactly
//! which table lacks what. Every identifier that reaches SQL text goes
//! through [`quote_ident`] / [`qualified`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Client;

use crate::error::{At, Result, Side, SyncError};

/// Quotes an identifier the way PostgreSQL's `quote_ident` does (always).
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Quotes a string literal (for the few statements that cannot take
/// parameters, such as `CREATE PUBLICATION`).
/// SQL for a jsonb object of `pairs` (each `'key', value`):
/// `jsonb_build_object` calls joined by `||`, since one takes at most 100
/// arguments; `'{}'::jsonb` when there are none.
pub fn object_sql(pairs: &[String]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    let parts: Vec<String> = pairs.chunks(40).map(|p| format!("jsonb_build_object({})", p.join(", "))).collect();
    format!("({})", parts.join(" || "))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `numeric(12,2)`.
    pub type_name: String,
    pub generated: bool,
}

impl Column {
    /// An array of json or jsonb: its JSON rendering (`to_jsonb`,
    /// PostgREST) turns an element that is JSON `null` into a NULL element,
    /// so such columns travel in their text form.
    pub fn is_json_array(&self) -> bool {
        matches!(self.type_name.as_str(), "json[]" | "jsonb[]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub parent_schema: String,
    pub parent_table: String,
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    /// Primary key columns, in key order.
    pub primary_key: Vec<String>,
    pub columns: Vec<Column>,
    pub foreign_keys: Vec<ForeignKey>,
    /// `relreplident`: 'd' default, 'f' full, 'i' index, 'n' nothing.
    pub replica_identity: char,
    /// With `replica_identity` 'i': the index and its columns.
    pub replica_identity_index: Option<(String, Vec<String>)>,
}

impl Table {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    pub fn has_updated_at(&self) -> bool {
        self.column("updated_at").is_some_and(|c| c.type_name.starts_with("timestamp"))
    }
    /// The single primary-key column, if the key has exactly one.
    pub fn pk(&self) -> Option<&Column> {
        match self.primary_key.as_slice() {
            [one] => self.column(one),
            _ => None,
        }
    }
    /// SQL for a row image of `alias` (a row of this table in the
    /// statement) as jsonb, as capture journals it from pgoutput: json and
    /// jsonb columns as JSON, every other column as its text form (so an
    /// array of jsonb keeps a JSON-null element apart from a NULL one, and
    /// every value is read back by its type's input function), generated
    /// columns left out. `columns` limits the image to those columns.
    /// `alias` must be a generated alias (e.g. `_cvs_r`), never a user name.
    pub fn image_sql(&self, alias: &str, columns: Option<&[String]>) -> String {
        let pairs: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !c.generated && columns.is_none_or(|only| only.contains(&c.name)))
            .map(|c| {
                let cast = if matches!(c.type_name.as_str(), "json" | "jsonb") { "" } else { "::text" };
                format!("{}, to_jsonb({alias}.{}{cast})", quote_literal(&c.name), quote_ident(&c.name))
            })
            .collect();
        object_sql(&pairs)
    }

    /// Why deletes (and key changes) of this table could not be keyed by
    /// its primary key, and the exact fix: the old row a delete carries in
    /// the WAL holds the replica identity's columns only. `NOTHING` sends
    /// none (and PostgreSQL refuses the application's deletes on a
    /// published table), an index without the key column sends other
    /// columns; capture could then only stop at the first delete.
    pub fn replica_identity_problem(&self) -> Option<(String, String)> {
        let pk = self.pk()?;
        let what = match (self.replica_identity, &self.replica_identity_index) {
            ('n', _) => format!("table {} has REPLICA IDENTITY NOTHING: its deletes cannot be captured", self.qualified()),
            ('i', Some((index, cols))) if !cols.contains(&pk.name) => format!(
                "table {} has REPLICA IDENTITY USING INDEX {} ({}), which does not carry the primary key {}: its deletes cannot be keyed",
                self.qualified(),
                quote_ident(index),
                cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "),
                quote_ident(&pk.name)
            ),
            _ => return None,
        };
        Some((what, format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT;", self.qualified())))
    }

    /// Why this table cannot be synced, if it cannot.
    pub fn unsyncable_reason(&self) -> Option<String> {
        if self.primary_key.is_empty() {
            return Some(format!(
                "table {} has no primary key; add one (e.g. ALTER TABLE {} ADD PRIMARY KEY (id))",
                self.qualified(),
                self.qualified()
            ));
        }
        if self.primary_key.len() > 1 {
            return Some(format!(
                "table {} has a composite primary key ({}); only single-column keys are supported",
                self.qualified(),
                self.primary_key.join(", ")
            ));
        }
        if !self.has_updated_at() {
            return Some(format!(
                "table {} has no updated_at timestamptz column; add one (ALTER TABLE {} ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()) and keep it current on every update",
                self.qualified(),
                self.qualified()
            ));
        }
        if let Some((what, fix)) = self.replica_identity_problem() {
            return Some(format!("{what}; fix: {fix}"));
        }
        None
    }
}

/// Reads the description of `tables` in `schema`. Missing tables are absent
/// from the result (the caller decides whether that is an error).
pub async fn load(client: &Client, side: Side, schema: &str, tables: &[String]) -> Result<BTreeMap<String, Table>> {
    let ctx = || match side {
        Side::Local => At::local("reading the table catalog"),
        Side::Upstream => At::upstream("reading the table catalog"),
    };
    let rows = client
        .query(
            "SELECT c.relname, c.relreplident::text, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> ''
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum",
            &[&schema, &tables],
        )
        .await
        .map_err(|e| SyncError::from_pg(ctx(), &e))?;
    let mut out: BTreeMap<String, Table> = BTreeMap::new();
    for r in rows {
        let name: String = r.get(0);
        let ident: String = r.get(1);
        let t = out.entry(name.clone()).or_insert_with(|| Table {
            schema: schema.to_string(),
            name,
            primary_key: Vec::new(),
            columns: Vec::new(),
            foreign_keys: Vec::new(),
            replica_identity: ident.chars().next().unwrap_or('d'),
            replica_identity_index: None,
        });
        t.columns.push(Column { name: r.get(2), type_name: r.get(3), generated: r.get(4) });
    }
    let keys = client
        .query(
            "SELECT c.relname, con.contype::text,
                    ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o)::text[],
                    pn.nspname::text, pc.relname::text,
                    ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)::text[]
             FROM pg_constraint con
             JOIN pg_class c ON c.oid = con.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_class pc ON pc.oid = con.confrelid
             LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND con.contype IN ('p', 'f')",
            &[&schema, &tables],
        )
        .await
        .map_err(|e| SyncError::from_pg(ctx(), &e))?;
    let idents = client
        .query(
            "SELECT c.relname, ic.relname::text,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND i.indisreplident",
            &[&schema, &tables],
        )
        .await
        .map_err(|e| SyncError::from_pg(ctx(), &e))?;
    for r in idents {
        let name: String = r.get(0);
        if let Some(t) = out.get_mut(&name) {
            t.replica_identity_index = Some((r.get(1), r.get(2)));
        }
    }
    for r in keys {
        let name: String = r.get(0);
        let Some(t) = out.get_mut(&name) else { continue };
        let kind: String = r.get(1);
        let cols: Vec<String> = r.get(2);
        if kind == "p" {
            t.primary_key = cols;
        } else {
            t.foreign_keys.push(ForeignKey {
                columns: cols,
                parent_schema: r.get::<_, Option<String>>(3).unwrap_or_default(),
                parent_table: r.get::<_, Option<String>>(4).unwrap_or_default(),
                parent_columns: r.get(5),
            });
        }
    }
    Ok(out)
}

/// Orders `tables` parents first, following foreign keys among them (cycles
/// and self-references are broken deterministically, by name).
pub fn parents_first(tables: &BTreeMap<String, Table>) -> Vec<String> {
    let mut deps: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for t in tables.values() {
        let e = deps.entry(t.name.as_str()).or_default();
        for fk in &t.foreign_keys {
            if fk.parent_schema == t.schema && fk.parent_table != t.name && tables.contains_key(&fk.parent_table) {
                e.insert(fk.parent_table.as_str());
            }
        }
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < tables.len() {
        let ready: Vec<&str> =
            tables.keys().map(String::as_str).filter(|n| !done.contains(n) && deps[n].iter().all(|p| done.contains(p))).collect();
        let pick: Vec<&str> = if ready.is_empty() {
            // A cycle: take the first remaining table by name.
            tables.keys().map(String::as_str).filter(|n| !done.contains(n)).take(1).collect()
        } else {
            ready
        };
        for n in pick {
            done.insert(n);
            order.push(n.to_string());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, parents: &[&str]) -> Table {
        Table {
            schema: "public".into(),
            name: name.into(),
            primary_key: vec!["id".into()],
            columns: vec![],
            foreign_keys: parents
                .iter()
                .map(|p| ForeignKey {
                    columns: vec![format!("{p}_id")],
                    parent_schema: "public".into(),
                    parent_table: p.to_string(),
                    parent_columns: vec!["id".into()],
                })
                .collect(),
            replica_identity: 'd',
            replica_identity_index: None,
        }
    }

    #[test]
    fn identifiers_are_always_quoted_and_embedded_quotes_doubled() {
        assert_eq!(quote_ident("patients"), "\"patients\"");
        assert_eq!(quote_ident("Weird \"T\""), "\"Weird \"\"T\"\"\"");
        assert_eq!(qualified("public", "select"), "\"public\".\"select\"");
    }

    #[test]
    fn a_replica_identity_that_cannot_key_a_delete_is_named_with_the_fix() {
        let mut t = table("Citas", &[]);
        t.columns = vec![
            Column { name: "id".into(), type_name: "uuid".into(), generated: false },
            Column { name: "updated_at".into(), type_name: "timestamp with time zone".into(), generated: false },
        ];
        assert_eq!(t.replica_identity_problem(), None, "DEFAULT keys by the primary key");
        t.replica_identity = 'f';
        assert_eq!(t.replica_identity_problem(), None, "FULL carries every column");
        t.replica_identity = 'i';
        t.replica_identity_index = Some(("citas_id_code".into(), vec!["id".into(), "code".into()]));
        assert_eq!(t.replica_identity_problem(), None, "an index with the key column keys deletes");
        t.replica_identity_index = Some(("Por Código".into(), vec!["code".into()]));
        let (what, fix) = t.replica_identity_problem().expect("an index without the key");
        assert!(what.contains(r#"USING INDEX "Por Código" ("code"), which does not carry the primary key "id""#), "{what}");
        assert_eq!(fix, r#"ALTER TABLE "public"."Citas" REPLICA IDENTITY DEFAULT;"#);
        t.replica_identity = 'n';
        let (what, _) = t.replica_identity_problem().expect("NOTHING");
        assert!(what.contains("REPLICA IDENTITY NOTHING"), "{what}");
        assert!(t.unsyncable_reason().is_some_and(|r| r.ends_with(&fix)), "init refuses it with the fix");
    }

    #[test]
    fn row_images_take_json_as_json_everything_else_as_text_and_leave_generated_columns_out() {
        let mut t = table("t", &[]);
        t.columns = vec![
            Column { name: "x".into(), type_name: "jsonb[]".into(), generated: false },
            Column { name: "j".into(), type_name: "jsonb".into(), generated: false },
            Column { name: "g".into(), type_name: "integer".into(), generated: true },
        ];
        assert_eq!(t.image_sql("_cvs_r", None), r#"(jsonb_build_object('x', to_jsonb(_cvs_r."x"::text), 'j', to_jsonb(_cvs_r."j")))"#);
        assert_eq!(t.image_sql("_cvs_r", Some(&["j".to_string()])), r#"(jsonb_build_object('j', to_jsonb(_cvs_r."j")))"#);
    }

    #[test]
    fn tables_are_ordered_parents_first_from_foreign_keys() {
        let mut m = BTreeMap::new();
        for t in [
            table("invoice_items", &["invoices"]),
            table("invoices", &["patients", "branches"]),
            table("patients", &["branches"]),
            table("branches", &[]),
            table("selfref", &["selfref"]),
        ] {
            m.insert(t.name.clone(), t);
        }
        let order = parents_first(&m);
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(pos("branches") < pos("patients"));
        assert!(pos("patients") < pos("invoices"));
        assert!(pos("invoices") < pos("invoice_items"));
        assert_eq!(order.len(), 5);
    }
}

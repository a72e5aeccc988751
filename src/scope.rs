//! Branch scoping: a clinic server holds its own branches' rows and the
//! shared catalogues, nothing of another branch.
//!
//! With `[sync] branch_ids` set, every synced table has a scope:
//! - **branch**: the row's own `branch_id` says which branch it belongs to;
//! - **via `<fk column>`**: the row belongs to the branch of the parent that
//!   column refers to (`invoice_items.invoice_id → invoices`), followed up to
//!   a branch-scoped table;
//! - **shared**: every branch's servers hold every row (`services`,
//!   `branches` itself).
//!
//! Inference from the local catalogue, overridable per table with
//! `[sync.table.<name>] scope`: a `branch_id` column makes a table
//! branch-scoped; else its first foreign key (by column name) to a scoped
//! synced table makes it scoped via that key; else it is shared.
//!
//! Rules:
//! - A row whose branch (or whose chain of parents) is NULL is not assigned
//!   to a branch and counts as in scope everywhere, like a shared row.
//! - Down: the filter runs upstream ([`Scopes::feed_arg`] travels with every
//!   feed call): no row of another branch is returned. A row that left the
//!   scope comes back as a key-only `out` change; the local copy is removed
//!   (with its via-children) only when it is in scope locally and no other
//!   local row still refers to it — a parent of another branch fetched by
//!   key (a patient seen at two branches) stays, so foreign keys never break.
//! - Up: rows outside the scope written locally are not sent; they are
//!   parked with the reason, which `status` shows.
//! - A row moved out of the scope locally (an update that gives it another
//!   branch) is sent like any update; the feed leaves out this clinic's own
//!   writes, so no `out` comes back for it: the pusher notes it in the
//!   journal with the batch that delivers it ([`UpFilter::take_moved`],
//!   `_sync_moved_away`, durable across restarts) and the down path removes the local copy,
//!   with its via-children, once no change of it is left unsynced
//!   ([`crate::down::remove_moved_away`]).
//! - `branch_ids` absent: unscoped, every table behaves as shared.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::catalog::{Table, quote_ident};
use crate::config::{Config, ScopeSetting};
use crate::error::{ErrorKind, Result, SyncError};

/// The column that names a row's branch in a branch-scoped table.
pub const BRANCH_COLUMN: &str = "branch_id";

/// One step from a row to its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The child's foreign key column.
    pub column: String,
    pub parent: String,
    /// The parent's key column the foreign key refers to.
    pub parent_key: String,
}

/// A table's resolved scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Shared,
    Branch,
    /// Through these foreign keys to a branch-scoped table.
    Via(Vec<Hop>),
}

impl Scope {
    /// As `status` and `doctor` print it.
    pub fn describe(&self) -> String {
        match self {
            Scope::Shared => "shared".into(),
            Scope::Branch => format!("branch ({BRANCH_COLUMN})"),
            Scope::Via(hops) => {
                let path: Vec<String> = hops.iter().map(|h| format!("{} → {}", h.column, h.parent)).collect();
                format!("via {}", path.join(", "))
            }
        }
    }

    pub fn is_scoped(&self) -> bool {
        !matches!(self, Scope::Shared)
    }
}

/// Every synced table's scope and the branches this server serves.
#[derive(Debug, Clone)]
pub struct Scopes {
    /// None: unscoped.
    pub branch_ids: Option<Vec<String>>,
    pub tables: BTreeMap<String, Scope>,
    /// Tables whose scope came from `[sync.table.<name>] scope`.
    pub overridden: BTreeSet<String>,
}

impl Scopes {
    pub fn scoped(&self) -> bool {
        self.branch_ids.is_some()
    }

    pub fn of(&self, table: &str) -> &Scope {
        self.tables.get(table).unwrap_or(&Scope::Shared)
    }

    /// The `scope` argument of `centrovision_sync_changes`
    /// (sql/upstream/003_row_state.sql): None when unscoped.
    pub fn feed_arg(&self) -> Option<serde_json::Value> {
        let branches = self.branch_ids.as_ref()?;
        let mut tables = serde_json::Map::new();
        for (name, s) in &self.tables {
            let via: Vec<serde_json::Value> = match s {
                Scope::Shared => continue,
                Scope::Branch => Vec::new(),
                Scope::Via(hops) => hops.iter().map(|h| json!({"fk": h.column, "parent": h.parent, "pk": h.parent_key})).collect(),
            };
            tables.insert(name.clone(), json!({"branch": BRANCH_COLUMN, "via": via}));
        }
        Some(json!({"branches": branches, "tables": tables}))
    }

    /// A boolean SQL expression: the row `alias` of `table` is in scope
    /// (its branch is one of `branches_param`, a `text[]` bind parameter
    /// such as `$2`, or unassigned). `"true"` for shared tables.
    pub fn predicate(&self, tables: &BTreeMap<String, Table>, table: &str, alias: &str, branches_param: &str) -> String {
        let hops = match self.of(table) {
            Scope::Shared => return "true".into(),
            Scope::Branch => &[][..],
            Scope::Via(h) => h.as_slice(),
        };
        let branch =
            |a: &str| format!("({a}.{c} IS NULL OR {a}.{c}::text = ANY({branches_param}::text[]))", c = quote_ident(BRANCH_COLUMN));
        let mut expr = String::new();
        let mut close = String::new();
        let mut prev = alias.to_string();
        for (i, h) in hops.iter().enumerate() {
            let a = format!("_cvs_s{i}");
            let parent = tables.get(&h.parent).map(|t| t.qualified()).unwrap_or_else(|| quote_ident(&h.parent));
            expr.push_str(&format!(
                "({prev}.{fk} IS NULL OR EXISTS (SELECT 1 FROM {parent} {a} WHERE {a}.{pk} = {prev}.{fk} AND ",
                fk = quote_ident(&h.column),
                pk = quote_ident(&h.parent_key),
            ));
            close.push_str("))");
            prev = a;
        }
        format!("{expr}{}{close}", branch(&prev))
    }

    /// Tables scoped through `table` directly (their first hop's parent).
    pub fn children_of(&self, table: &str) -> Vec<(String, Hop)> {
        self.tables
            .iter()
            .filter_map(|(name, s)| match s {
                Scope::Via(h) if h[0].parent == table => Some((name.clone(), h[0].clone())),
                _ => None,
            })
            .collect()
    }
}

/// Resolves every synced table's scope from the configuration and the local
/// catalogue; a scope that cannot hold is a configuration error naming the key.
pub fn resolve(cfg: &Config, tables: &BTreeMap<String, Table>) -> Result<Scopes> {
    let b = &cfg.sync.branches;
    let mut out: BTreeMap<String, Scope> = BTreeMap::new();
    for name in tables.keys() {
        let mut visiting = BTreeSet::new();
        resolve_one(cfg, tables, name, &mut out, &mut visiting)?;
    }
    Ok(Scopes { branch_ids: b.branch_ids.clone(), tables: out, overridden: b.overrides.keys().cloned().collect() })
}

fn config_error(table: &str, problem: String) -> SyncError {
    SyncError::new(ErrorKind::Config, format!("config key [sync.table.{table}] scope {problem}"))
        .with_hint("fix [sync.table.<name>] scope (\"branch\", \"shared\" or \"via:<fk column>\"), or remove it to infer the scope")
}

fn resolve_one(
    cfg: &Config,
    tables: &BTreeMap<String, Table>,
    name: &str,
    out: &mut BTreeMap<String, Scope>,
    visiting: &mut BTreeSet<String>,
) -> Result<Scope> {
    if let Some(s) = out.get(name) {
        return Ok(s.clone());
    }
    let Some(table) = tables.get(name) else {
        return Ok(Scope::Shared);
    };
    if !visiting.insert(name.to_string()) {
        // A cycle of foreign keys: nothing to follow.
        return Ok(Scope::Shared);
    }
    let over = cfg.sync.branches.overrides.get(name);
    let hop_of = |column: &str| -> Option<Hop> {
        table.foreign_keys.iter().find_map(|fk| match (fk.columns.as_slice(), fk.parent_columns.as_slice()) {
            ([c], [p]) if c == column && fk.parent_schema == table.schema && tables.contains_key(&fk.parent_table) => {
                Some(Hop { column: c.clone(), parent: fk.parent_table.clone(), parent_key: p.clone() })
            }
            _ => None,
        })
    };
    let scope = match over {
        Some(ScopeSetting::Shared) => Scope::Shared,
        Some(ScopeSetting::Branch) => {
            if table.column(BRANCH_COLUMN).is_none() {
                return Err(config_error(name, format!("is \"branch\" but the local table {name} has no {BRANCH_COLUMN} column")));
            }
            Scope::Branch
        }
        Some(ScopeSetting::Via(col)) => {
            let Some(hop) = hop_of(col) else {
                return Err(config_error(
                    name,
                    format!("is \"via:{col}\" but {name}.{col} is not a single-column foreign key to a synced table"),
                ));
            };
            match resolve_one(cfg, tables, &hop.parent, out, visiting)? {
                Scope::Shared => {
                    return Err(config_error(
                        name,
                        format!("is \"via:{col}\" but {col} refers to {}, which is shared (not branch-scoped)", hop.parent),
                    ));
                }
                Scope::Branch => Scope::Via(vec![hop]),
                Scope::Via(rest) => Scope::Via(std::iter::once(hop).chain(rest).collect()),
            }
        }
        None if table.column(BRANCH_COLUMN).is_some() => Scope::Branch,
        None => {
            let mut fks: Vec<&crate::catalog::ForeignKey> = table.foreign_keys.iter().filter(|fk| fk.columns.len() == 1).collect();
            fks.sort_by(|a, b| a.columns.cmp(&b.columns));
            let mut found = Scope::Shared;
            for fk in fks {
                let Some(hop) = hop_of(&fk.columns[0]) else { continue };
                if hop.parent == name {
                    continue;
                }
                match resolve_one(cfg, tables, &hop.parent, out, visiting)? {
                    Scope::Shared => continue,
                    Scope::Branch => found = Scope::Via(vec![hop]),
                    Scope::Via(rest) => found = Scope::Via(std::iter::once(hop).chain(rest).collect()),
                }
                break;
            }
            found
        }
    };
    visiting.remove(name);
    out.insert(name.to_string(), scope.clone());
    Ok(scope)
}

/// The up path's side of the scope: holds back journaled changes of rows
/// outside this server's branches (see [`crate::store::branch_hold`]).
pub struct UpFilter {
    scopes: Scopes,
    tables: BTreeMap<String, Table>,
    /// (table, key) of rows an update sent out of the scope, noted before
    /// the batch is sent; the down path removes them once synced.
    moved: std::sync::Mutex<BTreeSet<(String, String)>>,
}

impl UpFilter {
    /// None when the server is unscoped.
    pub async fn load(cfg: &Config, local: &tokio_postgres::Client) -> Result<Option<UpFilter>> {
        if cfg.sync.branches.branch_ids.is_none() {
            return Ok(None);
        }
        let tables = crate::catalog::load(local, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
        let scopes = resolve(cfg, &tables)?;
        Ok(Some(UpFilter { scopes, tables, moved: Default::default() }))
    }

    /// Parks the changes among the journal rows `rows` (id, table) that must
    /// not be sent; returns how many.
    pub async fn hold_back(
        &self,
        local: &tokio_postgres::Client,
        journal: &tokio_postgres::Client,
        rows: &[crate::store::Queued],
    ) -> Result<u64> {
        let store = crate::store::Store::new(local, crate::error::LOCAL);
        let jstore = crate::store::JournalStore::new(journal, crate::error::JOURNAL);
        let branches = self.scopes.branch_ids.clone().unwrap_or_default();
        // Per scoped table: every id of the batch, and the inserts' and
        // updates' images (an update out of the scope is a move: sent, noted).
        type Batch<'r> = (Vec<i64>, Vec<(i64, &'r str)>);
        let mut by_table: BTreeMap<&str, Batch<'_>> = BTreeMap::new();
        let mut updates: BTreeMap<i64, &str> = BTreeMap::new();
        for r in rows {
            if self.scopes.of(&r.table).is_scoped() {
                let e = by_table.entry(r.table.as_str()).or_default();
                e.0.push(r.id);
                match (r.op, r.data.as_deref(), r.record_id.as_deref()) {
                    (crate::store::Operation::Insert, Some(d), _) => e.1.push((r.id, d)),
                    (crate::store::Operation::Update, Some(d), Some(key)) => {
                        e.1.push((r.id, d));
                        updates.insert(r.id, key);
                    }
                    _ => {}
                }
            }
        }
        let mut n = 0;
        for (t, (ids, images)) in by_table {
            let Some(table) = self.tables.get(t) else { continue };
            let pred = self.scopes.predicate(&self.tables, t, "d", "$3");
            let (moved, out): (Vec<i64>, Vec<i64>) = store
                .out_of_scope(&table.qualified(), &pred, &branches, &images)
                .await?
                .into_iter()
                .partition(|id| updates.contains_key(id));
            if !moved.is_empty() {
                let mut set = self.moved.lock().expect("not poisoned");
                set.extend(moved.iter().map(|id| (t.to_string(), updates[id].to_string())));
            }
            let held = jstore.hold_back(t, &ids, &out).await?;
            if held > 0 {
                store.record_table_error(t, crate::store::branch_hold::HELD_BACK).await?;
                tracing::warn!(
                    table = %t, rows = held,
                    "local changes of rows outside this server's branches held back (parked, not sent); `status` lists them"
                );
            }
            n += held;
        }
        Ok(n)
    }

    /// The rows updates moved out of the scope since the last call (table,
    /// key), which the pusher notes in the journal when it settles the batch
    /// ([`crate::store::JournalStore::note_moved_away`]) for
    /// [`crate::down::remove_moved_away`].
    pub fn take_moved(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.moved.lock().expect("not poisoned")).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, ForeignKey};

    fn table(name: &str, cols: &[&str], fks: &[(&str, &str)]) -> Table {
        Table {
            schema: "public".into(),
            name: name.into(),
            primary_key: vec!["id".into()],
            columns: std::iter::once("id")
                .chain(cols.iter().copied())
                .map(|c| Column { name: c.into(), type_name: "uuid".into(), generated: false })
                .collect(),
            foreign_keys: fks
                .iter()
                .map(|(c, p)| ForeignKey {
                    columns: vec![c.to_string()],
                    parent_schema: "public".into(),
                    parent_table: p.to_string(),
                    parent_columns: vec!["id".into()],
                })
                .collect(),
            replica_identity: 'd',
            replica_identity_index: None,
        }
    }

    fn catalogue() -> BTreeMap<String, Table> {
        [
            table("branches", &[], &[]),
            table("services", &[], &[]),
            table("patients", &["branch_id"], &[("branch_id", "branches")]),
            table("invoices", &["branch_id", "patient_id"], &[("branch_id", "branches"), ("patient_id", "patients")]),
            table("invoice_items", &["invoice_id", "service_id"], &[("service_id", "services"), ("invoice_id", "invoices")]),
            table("item_notes", &["item_id"], &[("item_id", "invoice_items")]),
        ]
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
    }

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[supabase]\nmode = \"postgres\"\ndb_url = \"host=127.0.0.1 user=u dbname=d\"\n[local_postgres]\nhost = \"127.0.0.1\"\nport = 5432\ndatabase = \"d\"\nuser = \"u\"\npassword = \"p\"\n[sync]\nclinic_id = \"c1\"\n\
                 tables = [\"branches\", \"services\", \"patients\", \"invoices\", \"invoice_items\", \"item_notes\"]\n\
                 branch_ids = [\"b1\"]\n{extra}"
            ),
        )
        .unwrap();
        Config::load(&p).unwrap()
    }

    #[test]
    fn a_branch_id_column_scopes_a_table_and_a_foreign_key_to_a_scoped_table_scopes_its_children() {
        let s = resolve(&config(""), &catalogue()).unwrap();
        assert_eq!(s.of("branches"), &Scope::Shared);
        assert_eq!(s.of("services"), &Scope::Shared);
        assert_eq!(s.of("patients"), &Scope::Branch);
        assert_eq!(s.of("invoices"), &Scope::Branch);
        assert_eq!(s.of("invoice_items").describe(), "via invoice_id → invoices");
        assert_eq!(s.of("item_notes").describe(), "via item_id → invoice_items, invoice_id → invoices");
        assert_eq!(s.children_of("invoices").len(), 1);
        let arg = s.feed_arg().unwrap();
        assert_eq!(arg["branches"], json!(["b1"]));
        assert!(arg["tables"].get("services").is_none(), "shared tables are not filtered");
        assert_eq!(arg["tables"]["invoice_items"]["via"][0]["parent"], "invoices");
    }

    #[test]
    fn an_override_wins_and_an_impossible_one_is_a_config_error_naming_the_key() {
        let s = resolve(&config("[sync.table.patients]\nscope = \"shared\"\n"), &catalogue()).unwrap();
        assert_eq!(s.of("patients"), &Scope::Shared);
        let e = resolve(&config("[sync.table.services]\nscope = \"branch\"\n"), &catalogue()).unwrap_err();
        assert!(e.to_string().contains("[sync.table.services] scope"), "{e}");
        let e = resolve(&config("[sync.table.invoice_items]\nscope = \"via:service_id\"\n"), &catalogue()).unwrap_err();
        assert!(e.to_string().contains("which is shared"), "{e}");
    }
}

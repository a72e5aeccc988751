//! The down path's source: the upstream change feed, in server commit order.
//!
//! Several clinics and the cloud app write one Supabase project, each with
//! its own clock, so no `updated_at` can be a download cursor: a clinic that
//! was offline for hours commits changes stamped hours ago. Upstream keeps a
//! version record per row (`sql/upstream/003_row_state.sql`), and
//! `centrovision_sync_changes` returns the versions whose transactions became
//! visible between two snapshots — late commits included, deletes included,
//! this clinic's own writes left out.
//!
//! ```text
//!   cursor (per table, in _sync_metadata):  prev ──── target ──── (after = last version read)
//!   page  = versions visible in target, not in prev, version_id > after, ≤ batch_size of them
//!   short page → window done: prev := target, target := NULL (the next call takes a fresh one)
//! ```
//!
//! Progress rules:
//! - a page is applied in ONE local transaction together with the cursor of
//!   every table it covers, so a crash re-reads at most that page;
//! - before deciding, the page locks the local rows it touches, then waits
//!   until capture has journaled every local commit before that moment: a
//!   row with a local change that upstream has not processed yet (journal
//!   position above the `progress` the feed reported in the same snapshot)
//!   is left alone. Upstream decides it when the change arrives, and if the
//!   local change loses, upstream re-emits the winner into the feed, which
//!   brings it here. Every other row takes the upstream version as it is:
//!   upstream has already decided between it and anything this clinic sent.
//! - a table read for the first time is caught up to the other tables'
//!   window before joining them, so one call per page serves all tables.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::value::RawValue;

/// One page of `centrovision_sync_changes`.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub target: String,
    pub complete: bool,
    pub after: i64,
    #[serde(default)]
    pub horizon_passed: bool,
    /// The cursor was ahead of the server (a restored database): this page
    /// starts the window from the beginning.
    #[serde(default)]
    pub restarted: bool,
    /// Requested tables that do not exist upstream.
    #[serde(default)]
    pub missing: Vec<String>,
    /// What upstream has processed of this clinic's changes, in the same snapshot.
    pub progress: Option<Processed>,
    pub changes: Vec<Change>,
}

/// How far upstream has processed this clinic's changes: the highest
/// (capture epoch, journal id) of any apply call, and that call's commit LSN.
#[derive(Debug, Clone, Deserialize)]
pub struct Processed {
    pub epoch: i32,
    pub journal_id: i64,
    #[serde(default)]
    pub lsn: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Upsert,
    Delete,
    /// The row exists upstream but is outside this server's branch scope
    /// (contract 4, [`crate::scope`]): key only; the local copy, if in
    /// scope here, has moved away and is removed.
    Out,
}

/// One row version.
#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(rename = "t")]
    pub table: String,
    #[serde(rename = "k")]
    pub key: String,
    pub op: Op,
    #[serde(rename = "w")]
    pub writer: String,
    #[serde(rename = "v")]
    pub version: i64,
    #[serde(rename = "ts", default)]
    pub stamp: Option<String>,
    #[serde(default)]
    pub row: Option<Box<RawValue>>,
}

/// Where a table stands in the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cursor {
    pub prev: Option<String>,
    pub target: Option<String>,
    pub after: i64,
}

impl Cursor {
    /// The cursor after applying `page`.
    pub fn advanced(&self, page: &Page) -> Cursor {
        if page.complete {
            Cursor { prev: Some(page.target.clone()), target: None, after: 0 }
        } else {
            let prev = if page.restarted { None } else { self.prev.clone() };
            Cursor { prev, target: Some(page.target.clone()), after: page.after }
        }
    }
}

/// The arguments of `centrovision_sync_changes`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Request<'a> {
    pub writer: &'a str,
    pub schema_name: &'a str,
    pub tables: Vec<String>,
    pub prev: Option<String>,
    pub target: Option<String>,
    pub after: i64,
    pub lim: i64,
    pub since: Option<String>,
}

/// Tables grouped by identical cursor (normally one group), biggest first.
pub fn groups(cursors: &BTreeMap<String, Cursor>) -> Vec<(Cursor, Vec<String>)> {
    let mut by: HashMap<&Cursor, Vec<String>> = HashMap::new();
    for (t, c) in cursors {
        by.entry(c).or_default().push(t.clone());
    }
    let mut v: Vec<(Cursor, Vec<String>)> = by.into_iter().map(|(c, t)| (c.clone(), t)).collect();
    v.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    v
}

/// Changes of a page by table, upserts and deletes apart.
#[derive(Default)]
pub struct ByTable<'a> {
    pub upserts: Vec<&'a RawValue>,
    pub upsert_keys: Vec<&'a str>,
    pub deletes: Vec<&'a str>,
    /// Keys whose row left this server's branch scope ([`Op::Out`]).
    pub outs: Vec<&'a str>,
    /// The version of each key (upserts' and deletes' alike).
    pub versions: HashMap<&'a str, i64>,
}

pub fn split(page: &Page) -> BTreeMap<&str, ByTable<'_>> {
    let mut m: BTreeMap<&str, ByTable<'_>> = BTreeMap::new();
    for c in &page.changes {
        let e = m.entry(c.table.as_str()).or_default();
        e.versions.insert(&c.key, c.version);
        match (c.op, &c.row) {
            (Op::Upsert, Some(row)) => {
                e.upserts.push(row);
                e.upsert_keys.push(&c.key);
            }
            (Op::Out, _) => e.outs.push(&c.key),
            _ => e.deletes.push(&c.key),
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(complete: bool) -> Page {
        serde_json::from_str(&format!(
            r#"{{"target":"10:12:11","complete":{complete},"after":7,"horizon_passed":false,
                "progress":{{"epoch":2,"journal_id":41,"lsn":"0/16B3748"}},
                "changes":[{{"t":"patients","k":"a","op":"upsert","w":"cloud:service_role","v":6,"ts":"2026-01-01T00:00:00+00:00","row":{{"id":"a"}}}},
                           {{"t":"patients","k":"b","op":"delete","w":"clinic-b","v":7}},
                           {{"t":"patients","k":"c","op":"out","w":"clinic-b","v":8}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_restarted_window_drops_the_previous_snapshot() {
        let c = Cursor { prev: Some("5:5:".into()), target: Some("9:9:".into()), after: 3 };
        let mut p = page(false);
        p.restarted = true;
        assert_eq!(c.advanced(&p), Cursor { prev: None, target: Some("10:12:11".into()), after: 7 });
    }

    #[test]
    fn a_complete_page_closes_the_window_and_an_incomplete_one_keeps_reading_it() {
        let c = Cursor { prev: Some("5:5:".into()), target: None, after: 0 };
        assert_eq!(c.advanced(&page(true)), Cursor { prev: Some("10:12:11".into()), target: None, after: 0 });
        assert_eq!(c.advanced(&page(false)), Cursor { prev: Some("5:5:".into()), target: Some("10:12:11".into()), after: 7 });
    }

    #[test]
    fn a_page_splits_into_upserts_with_their_rows_and_deletes_by_key() {
        let p = page(true);
        let s = split(&p);
        let t = &s["patients"];
        assert_eq!(t.upsert_keys, vec!["a"]);
        assert_eq!(t.upserts[0].get(), r#"{"id":"a"}"#);
        assert_eq!(t.deletes, vec!["b"]);
        assert_eq!(t.outs, vec!["c"], "a row that left the branch scope is neither an upsert nor a delete");
    }

    #[test]
    fn tables_with_the_same_cursor_share_one_group_and_the_biggest_group_comes_first() {
        let mut m = BTreeMap::new();
        let a = Cursor { prev: Some("1:1:".into()), target: None, after: 0 };
        m.insert("patients".to_string(), a.clone());
        m.insert("branches".to_string(), a.clone());
        m.insert("services".to_string(), Cursor::default());
        let g = groups(&m);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, a);
        assert_eq!(g[0].1, vec!["branches".to_string(), "patients".to_string()]);
        assert_eq!(g[1].1, vec!["services".to_string()]);
    }
}

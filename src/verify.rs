//! `verify`: proves the two sides equal, or says exactly where they are not,
//! without shipping whole tables; `--repair` puts them back.
//!
//! Each database hashes its own rows (sql/upstream/002_verify.sql): rows are
//! bucketed by key and each bucket reports its row count and the XOR of its
//! row hashes, so only a few kilobytes cross the network. Buckets that
//! differ are drilled into row by row (key, hash, `updated_at`). Only the
//! columns both sides have are compared.
//!
//! Repair (after a full sync pass has journaled every local change) resolves
//! each remaining difference from the per-row state upstream
//! (`centrovision_sync_row_versions`: the row's current writer and whether
//! this clinic's change feed had already passed that version), never from a
//! clock watermark:
//! - a row only local, or on both sides but different: sent upstream as this
//!   clinic's version, positioned at the repair's start in its commit order,
//!   and the conflict rule decides there — except a row whose upstream
//!   version is another writer's that this clinic has not downloaded yet,
//!   which is brought down;
//! - a row only upstream: deleted upstream when the journal holds a local
//!   DELETE at least as new (a tombstone; the rule decides), else brought
//!   down. During `resync` only, a row this clinic wrote, or had downloaded,
//!   counts as deleted locally too, because deletes made while the slot was
//!   lost left no tombstone. A row another writer created that this clinic
//!   never had is never deleted as "deleted locally".
//!
//! At a scoped server ([`crate::scope`]) a branch-scoped table's comparison
//! is limited to this server's branches ([`limit_to_scope`]): rows of other
//! branches are never sent, deleted upstream or downloaded by key.
//!
//! A version that loses upstream is logged there as a conflict and its winner
//! re-emitted into the change feed; the caller reads the feed once after the
//! repair so the winners land here.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Client;

use crate::catalog::{Table, quote_ident};
use crate::config::Config;
use crate::down;
use crate::error::{ErrorKind, Result, SyncError};
use crate::scope::Scopes;
use crate::store::Store;
use crate::upstream::{HashRequest, Outcome, TableRef, Upstream};

const LOCAL: crate::error::At = crate::error::At::local("local database (verify)");

/// How many ids of each kind a report lists.
pub const MAX_IDS: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct TableDiff {
    pub table: String,
    pub local_rows: i64,
    pub upstream_rows: i64,
    pub buckets: i32,
    pub buckets_differing: usize,
    pub only_local: Vec<String>,
    pub only_upstream: Vec<String>,
    pub differ: Vec<String>,
    /// At a scoped server ([`limit_to_scope`]): rows upstream has and this
    /// server does not, of a branch-scoped table (other branches' rows, or
    /// rows of its own missing here: only the scoped feed can tell them
    /// apart). Not differences: never pulled nor deleted by key.
    #[serde(skip_serializing_if = "is_zero")]
    pub upstream_not_here: usize,
    /// At a scoped server: local rows outside its branches (parents of
    /// another branch, rows held back) that differ or upstream lacks. Left
    /// alone: never sent by a repair.
    #[serde(skip_serializing_if = "is_zero")]
    pub local_elsewhere: usize,
    #[serde(skip)]
    updated: HashMap<String, (Option<String>, Option<String>)>,
    /// The columns compared (both sides have them).
    #[serde(skip)]
    shared: Vec<String>,
}

impl TableDiff {
    pub fn is_equal(&self) -> bool {
        self.only_local.is_empty() && self.only_upstream.is_empty() && self.differ.is_empty()
    }
    pub fn drift(&self) -> usize {
        self.only_local.len() + self.only_upstream.len() + self.differ.len()
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Limits `diff` of a branch-scoped table to this server's branches
/// ([`crate::scope`]; nothing to do when unscoped or the table is shared):
/// local rows outside the scope leave `only_local` and `differ` (counted in
/// `local_elsewhere`), and rows only upstream leave `only_upstream`
/// (counted in `upstream_not_here`). So neither `verify --repair` nor
/// `resync` ever uploads, deletes upstream or downloads by key a row of a
/// branch this server does not serve; rows of its own branches missing here
/// come back through the scoped feed ([`crate::recovery`] restarts it).
pub async fn limit_to_scope(local: &Client, scopes: &Scopes, tables: &BTreeMap<String, Table>, diff: &mut TableDiff) -> Result<()> {
    if !scopes.scoped() || !scopes.of(&diff.table).is_scoped() {
        return Ok(());
    }
    let Some(table) = tables.get(&diff.table) else { return Ok(()) };
    let pk = table.pk().expect("syncable");
    let branches = scopes.branch_ids.clone().unwrap_or_default();
    let mine: Vec<String> = diff.only_local.iter().chain(&diff.differ).cloned().collect();
    let sql = format!(
        "SELECT d.{qpk}::text FROM {t} d WHERE d.{qpk}::text = ANY($1) AND {pred}",
        qpk = quote_ident(&pk.name),
        t = table.qualified(),
        pred = scopes.predicate(tables, &table.name, "d", "$2")
    );
    let in_scope: std::collections::HashSet<String> =
        local.query(&sql, &[&mine, &branches]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?.iter().map(|r| r.get(0)).collect();
    let before = mine.len();
    diff.only_local.retain(|k| in_scope.contains(k));
    diff.differ.retain(|k| in_scope.contains(k));
    diff.local_elsewhere = before - diff.only_local.len() - diff.differ.len();
    diff.upstream_not_here = diff.only_upstream.len();
    diff.only_upstream.clear();
    Ok(())
}

fn parse(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| SyncError::new(ErrorKind::Contract, format!("{what} returned invalid JSON: {e}")))
}

/// The way a side hashed its rows (sql/upstream/002_verify.sql); answers
/// without the key come from the first scheme.
fn hash_scheme(v: &Value) -> i64 {
    v["scheme"].as_i64().unwrap_or(1)
}

fn bucket_map(v: &Value) -> (BTreeMap<i64, (i64, i64)>, i64) {
    let mut m = BTreeMap::new();
    let mut total = 0;
    for b in v["buckets"].as_array().into_iter().flatten() {
        let (id, n, h) = (b[0].as_i64().unwrap_or(-1), b[1].as_i64().unwrap_or(0), b[2].as_i64().unwrap_or(0));
        total += n;
        m.insert(id, (n, h));
    }
    (m, total)
}

fn row_map(v: &Value) -> HashMap<String, (String, Option<String>)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[0].as_str()?.to_string(), (r[1].as_str()?.to_string(), r[2].as_str().map(str::to_string)))))
        .collect()
}

async fn local_call(local: &Client, sql: &str, h: &HashRequest<'_>, wanted: Option<&[i32]>) -> Result<String> {
    let r = match wanted {
        None => local.query_one(sql, &[&h.schema, &h.table, &h.key_column, &h.cols, &h.buckets]).await,
        Some(w) => local.query_one(sql, &[&h.schema, &h.table, &h.key_column, &h.cols, &h.buckets, &w]).await,
    };
    r.map(|r| r.get(0)).map_err(|e| {
        let err = SyncError::from_pg(LOCAL, &e);
        if err.code.as_deref() == Some("42883") {
            err.with_hint("the local hash functions are missing: run `centrovision-sync init`")
        } else {
            err
        }
    })
}

/// Compares one table on both sides.
pub async fn compare<U: Upstream>(cfg: &Config, local: &Client, up: &U, table: &Table) -> Result<TableDiff> {
    let pk = table.pk().ok_or_else(|| SyncError::new(ErrorKind::Config, table.unsyncable_reason().unwrap_or_default()))?;
    let count: i64 = local
        .query_one(&format!("SELECT count(*) FROM {}", table.qualified()), &[])
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?
        .get(0);
    let buckets = ((count / 256).clamp(16, 16_384) as u64).next_power_of_two().min(16_384) as i32;
    let mut cols: Vec<String> = table.columns.iter().filter(|c| !c.generated).map(|c| c.name.clone()).collect();
    cols.sort();
    // Upstream first: it reports the columns it has, the intersection.
    let up_text = up
        .bucket_hashes(&HashRequest { schema: &cfg.supabase.schema, table: &table.name, key_column: &pk.name, cols: &cols, buckets })
        .await?;
    let up_v = parse("upstream bucket hashes", &up_text)?;
    let used: Vec<String> = up_v["cols"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect();
    let up_v = if used != cols {
        cols = used;
        parse(
            "upstream bucket hashes",
            &up.bucket_hashes(&HashRequest {
                schema: &cfg.supabase.schema,
                table: &table.name,
                key_column: &pk.name,
                cols: &cols,
                buckets,
            })
            .await?,
        )?
    } else {
        up_v
    };
    let lreq = HashRequest { schema: &cfg.local_postgres.schema, table: &table.name, key_column: &pk.name, cols: &cols, buckets };
    let local_v = parse(
        "local bucket hashes",
        &local_call(local, "SELECT public.centrovision_sync_bucket_hashes($1, $2, $3, $4, $5)::text", &lreq, None).await?,
    )?;
    // Hashes of two ways of hashing never match: say which side to update
    // instead of reporting every row as different.
    let (local_scheme, up_scheme) = (hash_scheme(&local_v), hash_scheme(&up_v));
    if local_scheme != up_scheme {
        let stale = if up_scheme < local_scheme { "upstream" } else { "local" };
        return Err(SyncError::new(
            ErrorKind::Contract,
            format!("the {stale} verify functions hash rows another way (scheme {up_scheme} upstream, {local_scheme} local)"),
        )
        .with_hint(if stale == "upstream" {
            "run `centrovision-sync init --upstream` (or paste `init --print-upstream-sql` into the Supabase SQL editor)"
        } else {
            "run `centrovision-sync init` to update the local functions"
        }));
    }
    let (lb, ln) = bucket_map(&local_v);
    let (ub, un) = bucket_map(&up_v);
    let mut differing: Vec<i32> = lb.keys().chain(ub.keys()).filter(|b| lb.get(b) != ub.get(b)).map(|b| *b as i32).collect();
    differing.sort();
    differing.dedup();
    let mut diff = TableDiff {
        table: table.name.clone(),
        local_rows: ln,
        upstream_rows: un,
        buckets,
        buckets_differing: differing.len(),
        shared: cols.clone(),
        ..Default::default()
    };
    let ureq = HashRequest { schema: &cfg.supabase.schema, table: &table.name, key_column: &pk.name, cols: &cols, buckets };
    for chunk in differing.chunks(64) {
        let l = row_map(&parse(
            "local row hashes",
            &local_call(local, "SELECT public.centrovision_sync_row_hashes($1, $2, $3, $4, $5, $6)::text", &lreq, Some(chunk)).await?,
        )?);
        let u = row_map(&parse("upstream row hashes", &up.row_hashes(&ureq, chunk).await?)?);
        for (id, (h, ts)) in &l {
            match u.get(id) {
                None => diff.only_local.push(id.clone()),
                Some((uh, uts)) if uh != h => {
                    diff.differ.push(id.clone());
                    diff.updated.insert(id.clone(), (ts.clone(), uts.clone()));
                }
                _ => {}
            }
        }
        for (id, (_, uts)) in &u {
            if !l.contains_key(id) {
                diff.only_upstream.push(id.clone());
                diff.updated.insert(id.clone(), (None, uts.clone()));
            }
        }
    }
    diff.only_local.sort();
    diff.only_upstream.sort();
    diff.differ.sort();
    Ok(diff)
}

/// What a repair did to one table.
#[derive(Debug, Default, Serialize)]
pub struct Repaired {
    pub pushed: usize,
    pub pulled: u64,
    pub deleted_upstream: usize,
    pub kept_upstream: usize,
    pub rejected: Vec<String>,
}

/// Where a repair's own versions stand in this clinic's commit order: the
/// current capture epoch and the settled local WAL position when the repair
/// began ([`Store::settled_position`]: every local commit before it is in
/// the images the repair reads later, every commit after it comes later in
/// the order).
#[derive(Debug, Clone)]
pub struct Position {
    pub epoch: i32,
    pub lsn: String,
}

/// What a repair run works with: the configuration, the local connection
/// and the down path's session, the upstream, the synced tables, the
/// repair's position, and whether the run follows a lost slot (see the
/// module docs).
pub struct Repairer<'a, U> {
    pub cfg: &'a Config,
    pub local: &'a Client,
    pub session: &'a down::Session,
    pub up: &'a U,
    pub tables: &'a BTreeMap<String, Table>,
    pub position: &'a Position,
    pub after_lost_slot: bool,
}

/// A row's current version upstream (`centrovision_sync_row_versions`).
#[derive(Debug, Deserialize)]
struct Version {
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "w")]
    writer: String,
    #[serde(rename = "v")]
    version_id: i64,
    /// The version's transaction was visible in this clinic's last completed
    /// feed window: the clinic had it.
    seen: bool,
}

/// What the repair does with one differing row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Send the local row upstream as this clinic's version (the conflict
    /// rule decides there); `base` when the clinic had upstream's version.
    Push { base: Option<i64> },
    /// Send a delete stamped `ts` (the conflict rule decides there).
    Delete { ts: String },
    /// Bring upstream's row down.
    Pull,
}

/// The repair rules (pure; see the module docs). `me` is this clinic's
/// writer id; `tombstone` the commit time of a journaled local DELETE at
/// least as new as the upstream row; `now` the local clock.
fn decide(kind: Kind, version: Option<&Version>, me: &str, tombstone: Option<&str>, after_lost_slot: bool, now: &str) -> Decision {
    let mine = version.is_some_and(|v| v.writer == me);
    let legacy = version.is_none_or(|v| v.writer == "legacy");
    let seen = version.is_some_and(|v| v.seen);
    let base = version.filter(|v| v.seen && !mine).map(|v| v.version_id);
    match kind {
        Kind::OnlyLocal => Decision::Push { base },
        Kind::Differ if mine || legacy || seen || after_lost_slot => Decision::Push { base },
        // Another writer's version this clinic has not downloaded yet.
        Kind::Differ => Decision::Pull,
        Kind::OnlyUpstream => match tombstone {
            Some(ts) => Decision::Delete { ts: ts.to_string() },
            // Deletes made while the slot was lost left no tombstone: a row
            // this clinic wrote, or had downloaded, and no longer has was
            // deleted here. Another writer's row it never had is never
            // deleted as "deleted locally".
            None if after_lost_slot && (mine || (seen && !legacy)) => Decision::Delete { ts: now.to_string() },
            None => Decision::Pull,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OnlyLocal,
    OnlyUpstream,
    Differ,
}

impl<U: Upstream> Repairer<'_, U> {
    /// Resolves `diff` of `table` by the sync's rules (see the module docs).
    /// Versions that lose upstream are re-emitted into the change feed, so
    /// the caller reads the feed once after repairing every table.
    pub async fn repair(&self, table: &Table, diff: &TableDiff) -> Result<Repaired> {
        let Repairer { cfg, local, session, up, tables, position, after_lost_slot } = *self;
        let store = Store::new(local, LOCAL);
        let pk = table.pk().expect("syncable");
        let mut out = Repaired::default();
        let keyed = diff
            .only_local
            .iter()
            .map(|k| (k, Kind::OnlyLocal))
            .chain(diff.only_upstream.iter().map(|k| (k, Kind::OnlyUpstream)))
            .chain(diff.differ.iter().map(|k| (k, Kind::Differ)));
        let keys: Vec<String> = keyed.clone().map(|(k, _)| k.clone()).collect();
        let seen_in = store.feed_cursors(std::slice::from_ref(&table.name), 0).await?.into_iter().next().and_then(|(_, c, _)| c.prev);
        let mut versions: HashMap<String, Version> = HashMap::new();
        for chunk in keys.chunks(cfg.sync.batch_size.max(1)) {
            let text = up.row_versions(&table.name, chunk, seen_in.as_deref()).await?;
            let list: Vec<Version> = serde_json::from_str(&text).map_err(|e| {
                SyncError::new(ErrorKind::Contract, format!("centrovision_sync_row_versions answered something unexpected ({e})"))
            })?;
            versions.extend(list.into_iter().map(|v| (v.key.clone(), v)));
        }
        let now: String = local.query_one("SELECT now()::text", &[]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?.get(0);
        let mut push: Vec<(String, Option<i64>)> = Vec::new();
        let mut delete_up: Vec<(String, String)> = Vec::new();
        let mut pull_ids: Vec<String> = Vec::new();
        for (id, kind) in keyed {
            let tomb = match kind {
                Kind::OnlyUpstream => {
                    let uts = diff.updated.get(id).and_then(|(_, u)| u.clone());
                    session.journal().latest_tombstone(&table.name, id, uts.as_deref()).await?
                }
                _ => None,
            };
            match decide(kind, versions.get(id), &cfg.sync.clinic_id, tomb.as_deref(), after_lost_slot, &now) {
                Decision::Push { base } => push.push((id.clone(), base)),
                Decision::Delete { ts } => delete_up.push((id.clone(), ts)),
                Decision::Pull => pull_ids.push(id.clone()),
            }
        }

        // Up: local images (shared columns only) and deletes as this
        // clinic's versions at the repair's position, through the same
        // apply as the pusher. Columns upstream lacks stay out of the images
        // (apply would reject them).
        let only_local_cols: Vec<String> = table.columns.iter().map(|c| c.name.clone()).filter(|c| !diff.shared.contains(c)).collect();
        for chunk in push.chunks(cfg.sync.batch_size) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let bases: Vec<Option<i64>> = chunk.iter().map(|(_, b)| *b).collect();
            let changes: String = local
                .query_one(
                    &format!(
                        "SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object('i', u.ord - 1, 's', $2::text, 't', $3::text,
                                    'op', 'upsert', 'e', $5::int, 'l', $6::text, 'n', 0, 'b', u.base))
                                    || jsonb_build_object('row', {image} - $4::text[]) ORDER BY u.ord), '[]')::text
                     FROM unnest($1::text[], $7::bigint[]) WITH ORDINALITY u(id, base, ord)
                     JOIN {t} _cvs_r ON _cvs_r.{pk} = u.id::{ty}",
                        t = table.qualified(),
                        pk = quote_ident(&pk.name),
                        ty = pk.type_name,
                        image = table.image_sql("_cvs_r", None)
                    ),
                    &[&ids, &cfg.supabase.schema, &table.name, &only_local_cols, &position.epoch, &position.lsn, &bases],
                )
                .await
                .map_err(|e| SyncError::from_pg(LOCAL, &e))?
                .get(0);
            let o = up.apply(&changes).await?;
            for id in &ids {
                tracing::info!(table = %table.name, id = %id, "repair: sent the local row upstream");
            }
            tally(&mut out, &o, &ids, false);
        }
        for chunk in delete_up.chunks(cfg.sync.batch_size) {
            let els: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (id, ts))| {
                    serde_json::json!({"i": i, "s": cfg.supabase.schema, "t": table.name, "op": "delete", "k": id, "ts": ts,
                                       "e": position.epoch, "l": position.lsn, "n": 0})
                })
                .collect();
            let o = up.apply(&Value::Array(els).to_string()).await?;
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            for id in &ids {
                tracing::info!(table = %table.name, id = %id, "repair: sent the local delete upstream");
            }
            tally(&mut out, &o, &ids, true);
        }
        // Down: upstream rows through the down path's apply.
        let tref = TableRef::new(table, pk);
        for chunk in pull_ids.chunks(cfg.sync.batch_size) {
            let json = up.fetch(&tref, chunk).await?;
            let n = down::apply_rows(cfg, session, up, tables, table, &json).await?;
            for id in chunk {
                tracing::info!(table = %table.name, id = %id, "repair: applied the upstream row locally");
            }
            out.pulled += n;
        }
        Ok(out)
    }
}

fn tally(out: &mut Repaired, o: &Outcome, ids: &[String], deletes: bool) {
    if deletes {
        out.deleted_upstream += o.applied.len();
    } else {
        out.pushed += o.applied.len();
    }
    out.kept_upstream += o.kept.len();
    for r in &o.rejected {
        let id = ids.get(r.index as usize).cloned().unwrap_or_default();
        tracing::warn!(id = %id, code = r.code.as_deref().unwrap_or(""), error = %r.message, "repair: upstream rejected a row");
        out.rejected.push(format!("{id}: {}", r.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(writer: &str, seen: bool) -> Version {
        Version { key: "k".into(), writer: writer.into(), version_id: 7, seen }
    }

    const NOW: &str = "2026-12-02 10:00:00+00";

    #[test]
    fn a_row_another_writer_created_that_this_clinic_never_had_is_never_deleted_upstream() {
        for lost in [false, true] {
            assert_eq!(decide(Kind::OnlyUpstream, Some(&v("clinic-b", false)), "clinic-a", None, lost, NOW), Decision::Pull);
            assert_eq!(decide(Kind::OnlyUpstream, Some(&v("legacy", true)), "clinic-a", None, lost, NOW), Decision::Pull);
            assert_eq!(decide(Kind::OnlyUpstream, None, "clinic-a", None, lost, NOW), Decision::Pull);
        }
    }

    #[test]
    fn after_a_lost_slot_a_row_this_clinic_wrote_or_had_and_no_longer_has_is_deleted_upstream() {
        let del = Decision::Delete { ts: NOW.into() };
        assert_eq!(decide(Kind::OnlyUpstream, Some(&v("clinic-a", false)), "clinic-a", None, true, NOW), del);
        assert_eq!(decide(Kind::OnlyUpstream, Some(&v("clinic-b", true)), "clinic-a", None, true, NOW), del);
        // Without a lost slot every local delete is journaled: no tombstone, no delete.
        assert_eq!(decide(Kind::OnlyUpstream, Some(&v("clinic-a", false)), "clinic-a", None, false, NOW), Decision::Pull);
    }

    #[test]
    fn a_journaled_delete_is_sent_with_its_own_commit_time() {
        let ts = "2026-12-01 09:00:00+00";
        assert_eq!(
            decide(Kind::OnlyUpstream, Some(&v("clinic-b", false)), "clinic-a", Some(ts), false, NOW),
            Decision::Delete { ts: ts.into() }
        );
    }

    #[test]
    fn a_different_row_is_pushed_unless_it_is_another_writers_version_not_yet_downloaded() {
        assert_eq!(decide(Kind::Differ, Some(&v("clinic-a", false)), "clinic-a", None, false, NOW), Decision::Push { base: None });
        assert_eq!(decide(Kind::Differ, Some(&v("clinic-b", true)), "clinic-a", None, false, NOW), Decision::Push { base: Some(7) });
        assert_eq!(decide(Kind::Differ, Some(&v("clinic-b", false)), "clinic-a", None, false, NOW), Decision::Pull);
        // After a lost slot the local row may hold an edit that was never journaled: the rule decides.
        assert_eq!(decide(Kind::Differ, Some(&v("clinic-b", false)), "clinic-a", None, true, NOW), Decision::Push { base: None });
        assert_eq!(decide(Kind::OnlyLocal, None, "clinic-a", None, false, NOW), Decision::Push { base: None });
    }
}

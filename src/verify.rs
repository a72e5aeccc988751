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
//! each remaining difference by the sync's own rules:
//! - a row on both sides that differs: the newer `updated_at` wins (upstream
//!   on ties), through the same apply paths as normal sync;
//! - a row only local: pushed up (upstream never had it, or lost it);
//! - a row only upstream: deleted upstream when the journal holds a local
//!   DELETE at least as new (a tombstone), else brought down. During
//!   `resync` only, a row the down path had already passed (its `updated_at`
//!   at or before the table's watermark) counts as deleted locally too,
//!   because deletes made while the slot was lost left no tombstone.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::catalog::{Table, quote_ident};
use crate::config::Config;
use crate::down;
use crate::error::{ErrorKind, Result, SyncError};
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

fn parse(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| SyncError::new(ErrorKind::Contract, format!("{what} returned invalid JSON: {e}")))
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

/// What a repair run works with: the configuration, the local connection
/// and the down path's session, the upstream, the synced tables, and
/// whether the run follows a lost slot (see the module docs).
pub struct Repairer<'a, U> {
    pub cfg: &'a Config,
    pub local: &'a Client,
    pub session: &'a down::Session,
    pub up: &'a U,
    pub tables: &'a BTreeMap<String, Table>,
    pub after_lost_slot: bool,
}

impl<U: Upstream> Repairer<'_, U> {
    /// Resolves `diff` of `table` by the sync's rules (see the module docs).
    pub async fn repair(&self, table: &Table, diff: &TableDiff) -> Result<Repaired> {
        let Repairer { cfg, local, session, up, tables, after_lost_slot } = *self;
        let store = Store::new(local, LOCAL);
        let pk = table.pk().expect("syncable");
        let mut out = Repaired::default();
        let mut push_ids: Vec<String> = diff.only_local.clone();
        let mut pull_ids: Vec<String> = Vec::new();
        let mut delete_up: Vec<(String, String)> = Vec::new();
        for id in &diff.differ {
            let (l, u) = diff.updated.get(id).cloned().unwrap_or_default();
            // Newer wins; upstream wins ties. Compare as timestamps in SQL below
            // when both exist: collect candidates first.
            match (l, u) {
                (Some(l), Some(u)) if newer(local, &l, &u).await? => push_ids.push(id.clone()),
                _ => pull_ids.push(id.clone()),
            }
        }
        let watermark = store.down_watermark(&table.name).await?;
        for id in &diff.only_upstream {
            let uts = diff.updated.get(id).and_then(|(_, u)| u.clone());
            let tomb = store.latest_tombstone(&table.name, id, uts.as_deref()).await?;
            let passed = match (&watermark, &uts, after_lost_slot) {
                (Some(w), Some(u), true) => !newer(local, u, w).await?,
                _ => false,
            };
            match tomb {
                Some(ts) => delete_up.push((id.clone(), ts)),
                None if passed => {
                    let now: String = local.query_one("SELECT now()::text", &[]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?.get(0);
                    delete_up.push((id.clone(), now));
                }
                None => pull_ids.push(id.clone()),
            }
        }

        // Up: local images (shared columns only) and tombstones, through the
        // same last-write-wins apply as the pusher.
        // Columns upstream lacks stay out of the images (apply would reject them).
        let only_local_cols: Vec<String> = table.columns.iter().map(|c| c.name.clone()).filter(|c| !diff.shared.contains(c)).collect();
        for chunk in push_ids.chunks(cfg.sync.batch_size) {
            let changes: String = local
                .query_one(
                    &format!(
                        "SELECT coalesce(jsonb_agg(jsonb_build_object('i', u.ord - 1, 's', $2::text, 't', $3::text, 'op', 'upsert',
                                                                  'row', to_jsonb(x) - $4::text[]) ORDER BY u.ord), '[]')::text
                     FROM unnest($1::text[]) WITH ORDINALITY u(id, ord)
                     JOIN {t} x ON x.{pk} = u.id::{ty}",
                        t = table.qualified(),
                        pk = quote_ident(&pk.name),
                        ty = pk.type_name
                    ),
                    &[&chunk, &cfg.supabase.schema, &table.name, &only_local_cols],
                )
                .await
                .map_err(|e| SyncError::from_pg(LOCAL, &e))?
                .get(0);
            let o = up.apply(&changes).await?;
            for id in chunk {
                tracing::info!(table = %table.name, id = %id, "repair: pushed the local row upstream");
            }
            tally(&mut out, &o, chunk, false);
        }
        for chunk in delete_up.chunks(cfg.sync.batch_size) {
            let els: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (id, ts))| serde_json::json!({"i": i, "s": cfg.supabase.schema, "t": table.name, "op": "delete", "k": id, "ts": ts}))
                .collect();
            let o = up.apply(&Value::Array(els).to_string()).await?;
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            for id in &ids {
                tracing::info!(table = %table.name, id = %id, "repair: deleted upstream (deleted locally)");
            }
            tally(&mut out, &o, &ids, true);
        }
        // Down: upstream rows through the down path's apply.
        let tref = TableRef { name: &table.name, pk: &pk.name, pk_type: &pk.type_name };
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
        let id = ids.get(r.i as usize).cloned().unwrap_or_default();
        tracing::warn!(id = %id, code = r.code.as_deref().unwrap_or(""), error = %r.message, "repair: upstream rejected a row");
        out.rejected.push(format!("{id}: {}", r.message));
    }
}

/// Whether timestamptz text `a` is strictly newer than `b`.
async fn newer(local: &Client, a: &str, b: &str) -> Result<bool> {
    local
        .query_one("SELECT $1::text::timestamptz > $2::text::timestamptz", &[&a, &b])
        .await
        .map(|r| r.get(0))
        .map_err(|e| SyncError::from_pg(LOCAL, &e))
}

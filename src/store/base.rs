//! `_sync_row_base`: which upstream version each local row was last
//! downloaded at, so the pusher can tell upstream "this change was made on
//! that version" (`b`) and an informed edit is not logged as a conflict
//! (see `sql/005_row_base.sql`).

use std::collections::HashMap;

use super::Store;
use crate::error::Result;

impl Store<'_> {
    /// In the down path's page transaction: `keys[i]` of `table` now stands
    /// at upstream version `versions[i]`.
    pub async fn record_bases(&self, table: &str, keys: &[&str], versions: &[i64]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.client
            .execute(
                "INSERT INTO _sync_row_base (table_name, record_id, version_id)
                 SELECT $1, k, v FROM unnest($2::text[], $3::bigint[]) AS u(k, v)
                 ON CONFLICT (table_name, record_id) DO UPDATE SET version_id = EXCLUDED.version_id",
                &[&table, &keys, &versions],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The base versions of the given (table, record id) pairs that have one.
    pub async fn bases(&self, rows: &[(&str, &str)]) -> Result<HashMap<(String, String), i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let (tables, ids): (Vec<&str>, Vec<&str>) = rows.iter().copied().unzip();
        let found = self
            .client
            .query(
                "SELECT b.table_name::text, b.record_id, b.version_id
                 FROM unnest($1::text[], $2::text[]) AS u(t, k)
                 JOIN _sync_row_base b ON b.table_name = u.t AND b.record_id = u.k",
                &[&tables, &ids],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
    }
}

//! Readiness: the checks every command that syncs runs before it starts —
//! the local database is initialized and has every configured table, and
//! the upstream functions are installed in the version this build needs.

use std::collections::BTreeMap;

use crate::catalog::{self, Table};
use crate::config::{Config, connect_local};
use crate::error::{ErrorKind, LOCAL, Result, Side, SyncError};
use crate::store::Store;
use crate::upstream::{self, CONTRACT_VERSION, Upstream};

/// The local catalog of the synced tables, checked for syncability.
pub async fn local_tables(cfg: &Config) -> Result<BTreeMap<String, Table>> {
    let local = connect_local(cfg).await?;
    if !Store::new(&local, LOCAL).initialized(&cfg.sync.slot_name).await? {
        return Err(SyncError::new(
            ErrorKind::NotInitialized,
            "the local database is not initialized for sync (control tables or slot missing)",
        ));
    }
    let tables = catalog::load(&local, Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    if let Some(missing) = cfg.sync.tables.iter().find(|t| !tables.contains_key(*t)) {
        return Err(SyncError::new(ErrorKind::MissingObject, format!("configured table {missing} does not exist locally"))
            .with_hint("create it, or remove it from [sync] tables"));
    }
    Ok(tables)
}

/// Checks that the upstream functions are installed, in this build's version.
pub async fn check_contract(up: &upstream::Client) -> Result<()> {
    const FIX: &str =
        "run `centrovision-sync init --upstream` (postgres mode) or paste `init --print-upstream-sql` into the Supabase SQL editor";
    match up.contract_version().await? {
        Some(CONTRACT_VERSION) => Ok(()),
        Some(v) => Err(SyncError::new(
            ErrorKind::Contract,
            format!("the upstream sync functions are version {v}; this build needs version {CONTRACT_VERSION}"),
        )
        .with_hint(FIX)),
        None => Err(SyncError::new(ErrorKind::Contract, "the upstream sync functions (public.centrovision_sync_apply) are not installed")
            .with_hint(FIX)),
    }
}

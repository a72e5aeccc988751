//! Readiness: the checks every command that syncs runs before it starts —
//! the local database is initialized and has every configured table, each
//! table's deletes can be keyed by its primary key (REPLICA IDENTITY), and
//! the upstream functions are installed in the version this build needs.

use std::collections::BTreeMap;

use crate::catalog::{self, Table};
use crate::config::{Config, connect_journal, connect_local};
use crate::error::{ErrorKind, JOURNAL, LOCAL, Result, Side, SyncError};
use crate::store::{JournalStore, Store};
use crate::upstream::{self, CONTRACT_VERSION, Upstream};

/// The local catalog of the synced tables, checked for syncability.
pub async fn local_tables(cfg: &Config) -> Result<BTreeMap<String, Table>> {
    let local = connect_local(cfg).await?;
    let store = Store::new(&local, LOCAL);
    // An older version's journal in the clinic's database: `init` moves it.
    if store.legacy_journal_present().await? {
        return Err(SyncError::new(
            ErrorKind::NotInitialized,
            "the journal (_sync_pending) is still in the clinic's database, where an earlier centrovision-sync version kept it",
        )
        .with_hint(format!(
            "run `centrovision-sync init` to upgrade in place: it moves every journaled change, synced or not, to the journal database {}",
            catalog::quote_literal(&cfg.local_postgres.journal_database)
        )));
    }
    let journal_client = open_journal(cfg, &store).await?;
    let journal = JournalStore::new(&journal_client, JOURNAL);
    // Bookkeeping from another cluster first: a restored database has its
    // control tables but not its slot, and the fix needs saying.
    if journal.tables_present().await? {
        check_cluster(&store, &journal, &cfg.sync.slot_name).await?;
    }
    if !journal.initialized(&cfg.sync.slot_name).await? {
        return Err(SyncError::new(
            ErrorKind::NotInitialized,
            "the local database is not initialized for sync (control tables or slot missing)",
        ));
    }
    if !store.history_present().await? {
        return Err(SyncError::new(ErrorKind::NotInitialized, "the local database was set up by an earlier centrovision-sync version")
            .with_hint("run `centrovision-sync init` to upgrade in place (it adds the hourly history, sql/006_history.sql)"));
    }
    if !store.down_parked_present().await? {
        return Err(SyncError::new(ErrorKind::NotInitialized, "the local database was set up by an earlier centrovision-sync version")
            .with_hint("run `centrovision-sync init` to upgrade in place (it adds the down path's parked rows, sql/007_down_parked.sql)"));
    }
    let tables = catalog::load(&local, Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    if let Some(missing) = cfg.sync.tables.iter().find(|t| !tables.contains_key(*t)) {
        return Err(SyncError::new(ErrorKind::MissingObject, format!("configured table {missing} does not exist locally"))
            .with_hint("create it, or remove it from [sync] tables"));
    }
    // A delete capture could not key would stop it at that delete (or, with
    // NOTHING, PostgreSQL refuses the clinic's deletes): refused up front,
    // with the fix `doctor` prints.
    if let Some((what, fix)) = tables.values().find_map(|t| t.replica_identity_problem()) {
        return Err(SyncError::new(ErrorKind::Config, what).with_hint(fix));
    }
    // Branch scopes that cannot hold are refused before syncing (crate::scope).
    crate::scope::resolve(cfg, &tables)?;
    Ok(tables)
}

/// Connects to the journal database; when it does not exist although this
/// clinic database was set up for sync, says what happened and what to do.
pub async fn open_journal(cfg: &Config, store: &Store<'_>) -> Result<tokio_postgres::Client> {
    match connect_journal(cfg).await {
        Err(e) if e.code.as_deref() == Some("3D000") && store.control_tables_present().await.unwrap_or(false) => Err(SyncError::new(
            ErrorKind::NotInitialized,
            format!(
                "the journal database {} does not exist on this server, but this clinic database was set up for sync: \
                 it was restored or moved here without its journal database, or that was dropped",
                catalog::quote_literal(&cfg.local_postgres.journal_database)
            ),
        )
        .with_hint(
            "run `centrovision-sync init`: it creates the journal database and starts a new capture epoch (changes the old \
             journal held and had not sent are not on this server); then `centrovision-sync verify` compares both sides",
        )),
        r => r,
    }
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

/// Capture positions belong to one cluster: bookkeeping from another one (a
/// restored or moved database) or from before this version needs `init`.
pub async fn check_cluster(store: &Store<'_>, journal: &JournalStore<'_>, slot: &str) -> Result<()> {
    let now = store.system_identifier().await?;
    match journal.capture_identity(slot).await? {
        Some((Some(was), _)) if was == now => Ok(()),
        Some((Some(was), _)) => Err(SyncError::new(
            ErrorKind::NotInitialized,
            format!(
                "the capture bookkeeping of this database belongs to another PostgreSQL cluster \
                 (system identifier {was}; this cluster is {now}): the database was restored or moved"
            ),
        )
        .with_hint("run `centrovision-sync init`: it starts a new capture epoch from a new slot; changes already journaled are kept")),
        _ => Err(SyncError::new(
            ErrorKind::NotInitialized,
            "the local database was set up by an earlier centrovision-sync version",
        )
        .with_hint("run `centrovision-sync init` and `init --upstream` (or paste `init --print-upstream-sql` into the Supabase SQL editor) to upgrade in place")),
    }
}

//! `init`: prepares the local database (control tables, publication, slot,
//! replication origin) and, with `--upstream`, the upstream functions.
//! Idempotent: every step checks before it creates.

use crate::catalog::{self, quote_ident, quote_literal};
use crate::config::{Config, UpstreamMode, connect_journal, connect_local};
use crate::error::{ErrorKind, Result, SyncError};
use crate::store::{JournalRow, JournalStore, Operation, Store};
use crate::upstream::{self, Upstream};

const LOCAL: crate::error::At = crate::error::At::local("local database");
const JOURNAL: crate::error::At = crate::error::At::local("journal database");

/// Rows `--upload-existing` reads per round trip (the journal writer's
/// chunk size).
const UPLOAD_CHUNK: i64 = 2_000;

pub async fn init(cfg: &Config, with_upstream: bool, upload_existing: Option<bool>) -> Result<()> {
    let local = connect_local(cfg).await?;
    check_wal_level(&local).await?;

    // Tables first: refuse before changing anything.
    let tables = catalog::load(&local, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    let missing: Vec<&String> = cfg.sync.tables.iter().filter(|t| !tables.contains_key(*t)).collect();
    if !missing.is_empty() {
        return Err(SyncError::new(
            ErrorKind::MissingObject,
            format!(
                "these [sync] tables do not exist in the local database (schema {}): {}",
                cfg.local_postgres.schema,
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
        .with_hint("create them, or remove them from [sync] tables in config.toml"));
    }
    let problems: Vec<String> = tables.values().filter_map(|t| t.unsyncable_reason()).collect();
    if !problems.is_empty() {
        return Err(SyncError::new(ErrorKind::Config, problems.join("; ")));
    }

    let store = Store::new(&local, LOCAL);
    store.install_schema().await?;
    // The verify hash functions, so both sides hash alike (own BEGIN/COMMIT).
    local
        .batch_execute(upstream::VERIFY_SQL)
        .await
        .map_err(|e| SyncError::from_pg(LOCAL.doing("applying sql/upstream/002_verify.sql"), &e))?;
    // The journal database beside the clinic's (created once), its schema,
    // and an older installation's journal moved into it.
    ensure_journal_database(&local, &cfg.local_postgres.journal_database).await?;
    let journal_client = connect_journal(cfg).await?;
    let journal = JournalStore::new(&journal_client, JOURNAL);
    journal.install_schema().await?;
    if let Some(m) = crate::store::journal_move::move_journal(&store, &journal).await? {
        tracing::info!(rows = m.rows, unsynced = m.unsynced, database = %cfg.local_postgres.journal_database, "journal moved to the journal database");
        println!(
            "moved the journal ({} rows, {} not yet synced) to the journal database {}",
            m.rows,
            m.unsynced,
            quote_literal(&cfg.local_postgres.journal_database)
        );
    }
    tracing::info!("control tables ready");

    // Publication: exactly the configured tables. Changing it needs table
    // ownership (or superuser), so it is only touched when it differs: a
    // least-privilege role can re-run `init` once a superuser created it.
    let published: Option<Vec<String>> = local
        .query_opt(
            "SELECT coalesce((SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_publication_tables
                              WHERE pubname = $1 AND schemaname = $2), '{}')
             FROM pg_publication WHERE pubname = $1",
            &[&cfg.sync.publication_name, &cfg.local_postgres.schema],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?
        .map(|r| r.get(0));
    let mut wanted: Vec<String> = cfg.sync.tables.clone();
    wanted.sort();
    let list = cfg.sync.tables.iter().map(|t| catalog::qualified(&cfg.local_postgres.schema, t)).collect::<Vec<_>>().join(", ");
    // Tables joining an existing publication: their rows so far are uploaded below.
    let added: Vec<String> = match &published {
        Some(p) => cfg.sync.tables.iter().filter(|t| !p.contains(t)).cloned().collect(),
        None => Vec::new(),
    };
    let sql = match &published {
        Some(p) if *p == wanted => None,
        Some(_) => Some(format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(&cfg.sync.publication_name))),
        None => Some(format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(&cfg.sync.publication_name))),
    };
    if let Some(sql) = sql {
        local.batch_execute(&sql).await.map_err(|e| {
            let err = SyncError::from_pg(LOCAL, &e);
            if err.code.as_deref() == Some("42501") {
                err.with_hint("creating or changing the publication needs the tables' owner or a superuser: run `init` once as a superuser (see deploy/OPERATIONS.md)")
            } else {
                err
            }
        })?;
    }
    tracing::info!(publication = %cfg.sync.publication_name, tables = cfg.sync.tables.len(), "publication ready");

    // Slot.
    let slot = local
        .query_opt("SELECT plugin, database, wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.sync.slot_name])
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
    let created_slot = slot.is_none();
    match slot {
        None => {
            local
                .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&cfg.sync.slot_name])
                .await
                .map_err(|e| SyncError::from_pg(LOCAL, &e))?;
            tracing::info!(slot = %cfg.sync.slot_name, "replication slot created");
        }
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let db: Option<String> = r.get(1);
            if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(cfg.local_postgres.database.as_str()) {
                return Err(SyncError::new(
                    ErrorKind::Config,
                    format!(
                        "replication slot {} exists but belongs to another plugin or database ({:?} on {:?})",
                        cfg.sync.slot_name, plugin, db
                    ),
                )
                .with_hint("choose another [sync] slot_name, or drop that slot if it is unused"));
            }
            let status: Option<String> = r.get(2);
            if status.as_deref() == Some("lost") {
                return Err(SyncError::new(
                    ErrorKind::SlotInvalidated,
                    format!("replication slot {} is invalidated (wal_status = lost)", cfg.sync.slot_name),
                )
                .with_hint("run `centrovision-sync resync` to recreate it and reconcile both sides"));
            }
        }
    }

    // Replication origin for the down path's writes.
    local
        .execute(
            "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&cfg.sync.origin_name],
        )
        .await
        .map_err(|e| SyncError::from_pg(LOCAL, &e))?;

    store.ensure_table_rows(&cfg.sync.tables).await?;
    journal.ensure_capture_row(&cfg.sync.slot_name).await?;
    // Positions of this clinic's changes: tied to this cluster and slot.
    let sysid = store.system_identifier().await?;
    let before = journal.capture_identity(&cfg.sync.slot_name).await?;
    let known = store.capture_epoch_mirror().await?;
    let epoch = journal.tie_to_cluster(&cfg.sync.slot_name, &sysid, created_slot, known).await?;
    store.set_note("capture:epoch", Some(&epoch.to_string())).await?;
    match before {
        Some((Some(old), _)) if old != sysid => tracing::warn!(
            previous_cluster = %old, cluster = %sysid, epoch,
            "this database was restored into another cluster: capture starts a new epoch from the new slot"
        ),
        Some((_, e)) if e != epoch => tracing::info!(epoch, "new replication slot: capture epoch {epoch}"),
        _ => {}
    }

    if with_upstream {
        install_upstream(cfg).await?;
    }
    if let Some(force) = upload_existing {
        upload_existing_rows(cfg, &local, &journal_client, &tables, force).await?;
    } else if !added.is_empty() {
        // Changes committed after the publication changed are captured; the
        // rows from before, journaled here, are the rest.
        let n = journal_existing_rows(cfg, &local, &journal_client, &tables, &added).await?;
        println!("{} added to the synced tables: journaled its {n} existing rows for upload", added.join(", "));
    }
    println!(
        "initialized: control tables, publication {}, slot {}, origin {} for {} tables",
        quote_literal(&cfg.sync.publication_name),
        quote_literal(&cfg.sync.slot_name),
        quote_literal(&cfg.sync.origin_name),
        cfg.sync.tables.len()
    );
    Ok(())
}

/// `init --upload-existing`: journals the current rows of every synced
/// table (see [`journal_existing_rows`]) once, and notes that it did.
async fn upload_existing_rows(
    cfg: &Config,
    local: &tokio_postgres::Client,
    journal: &tokio_postgres::Client,
    tables: &std::collections::BTreeMap<String, catalog::Table>,
    force: bool,
) -> Result<()> {
    let jstore = JournalStore::new(journal, JOURNAL);
    if let (Some(at), false) = (jstore.uploaded_existing_at(&cfg.sync.slot_name).await?, force) {
        println!("existing rows were already uploaded at {at}; nothing to do (use --force to upload them again)");
        return Ok(());
    }
    let total = journal_existing_rows(cfg, local, journal, tables, &catalog::parents_first(tables)).await?;
    jstore.mark_uploaded_existing(&cfg.sync.slot_name).await?;
    println!("journaled {total} existing rows for upload; `run` or `once` pushes them");
    Ok(())
}

/// Journals the current local rows of `names` (parents first) as INSERTs,
/// so the pusher delivers rows that predate their capture; at a scoped
/// server only the rows of its branches ([`crate::scope`]).
///
/// They take one position in this clinic's commit order
/// ([`Store::settled_position`], ordinals counting up), read from a snapshot
/// that holds every commit before it: upstream applies them after every
/// captured change they include and before every one they lack. One
/// transaction of the journal database, through the journal's own writer
/// ([`JournalStore::journal_batch`]), fed from one snapshot of the clinic's
/// database, with that transaction's time as commit time.
async fn journal_existing_rows(
    cfg: &Config,
    local: &tokio_postgres::Client,
    journal: &tokio_postgres::Client,
    tables: &std::collections::BTreeMap<String, catalog::Table>,
    names: &[String],
) -> Result<u64> {
    let store = Store::new(local, LOCAL);
    let jstore = JournalStore::new(journal, JOURNAL);
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let scopes = crate::scope::resolve(cfg, tables)?;
    let branches: Vec<String> = scopes.branch_ids.clone().unwrap_or_default();
    let position = store.settled_position().await?;
    local.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await.map_err(q)?;
    journal.batch_execute("BEGIN").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
    jstore.lock_for_writing().await?;
    let now: crate::store::pending::PgMicros = local.query_one("SELECT now()", &[]).await.map_err(q)?.get(0);
    let mut total = 0u64;
    let mut ordinal = 0i32;
    for name in names {
        let t = &tables[name];
        let pk = t.pk().expect("checked above");
        // A scoped server uploads only its branches' rows (crate::scope):
        // parents of another branch fetched by key are already upstream.
        let params: [&(dyn postgres_types::ToSql + Sync); 1] = [&branches];
        let in_scope = if scopes.scoped() { scopes.predicate(tables, name, "_cvs_r", "$1") } else { "true".into() };
        local
            .execute(
                &format!(
                    "DECLARE cvsync_upload NO SCROLL CURSOR FOR
                 SELECT _cvs_r.{pk}::text, {image}::text FROM {tab} _cvs_r WHERE {in_scope} ORDER BY _cvs_r.updated_at",
                    image = t.image_sql("_cvs_r", None),
                    pk = quote_ident(&pk.name),
                    tab = t.qualified()
                ),
                &params[..if in_scope.contains("$1") { 1 } else { 0 }],
            )
            .await
            .map_err(q)?;
        let fetch = format!("FETCH {UPLOAD_CHUNK} FROM cvsync_upload");
        let mut n = 0u64;
        loop {
            let rows = local.query(&fetch, &[]).await.map_err(q)?;
            if rows.is_empty() {
                break;
            }
            // Collected first: a closure held across the await would make
            // the future not provably `Send`.
            let batch: Vec<JournalRow<'_>> = rows
                .iter()
                .map(|r| {
                    ordinal += 1;
                    JournalRow {
                        table: name,
                        record_id: r.get(0),
                        op: Operation::Insert,
                        data: r.get(1),
                        commit_lsn: Some(position),
                        ordinal: Some(ordinal),
                        xid: None,
                        commit_time_micros: now.0,
                        unchanged: &[],
                    }
                })
                .collect();
            n += jstore.journal_batch(batch).await?;
        }
        local.batch_execute("CLOSE cvsync_upload").await.map_err(q)?;
        tracing::info!(table = %name, rows = n, "existing rows journaled for upload");
        total += n;
    }
    journal.batch_execute("COMMIT").await.map_err(|e| SyncError::from_pg(JOURNAL, &e))?;
    local.batch_execute("COMMIT").await.map_err(q)?;
    Ok(total)
}

/// Creates the journal database on the clinic's cluster unless it exists
/// (owned by the role `init` runs as).
async fn ensure_journal_database(local: &tokio_postgres::Client, name: &str) -> Result<()> {
    let q = |e| SyncError::from_pg(LOCAL, &e);
    let exists = local.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.map_err(q)?.is_some();
    if exists {
        return Ok(());
    }
    // FILE_COPY: about 1 kB of WAL where the default strategy logs the whole
    // template (~4 MB), which the walsender would have to read past.
    local.batch_execute(&format!("CREATE DATABASE {} STRATEGY = FILE_COPY", quote_ident(name))).await.map_err(|e| {
        let err = q(e);
        match err.code.as_deref() {
            Some("42501") => err.with_hint(format!(
                "creating the journal database needs CREATEDB or a superuser: run `init` as a superuser (see deploy/OPERATIONS.md), \
                 or have one run CREATE DATABASE {} OWNER <the service role>",
                quote_ident(name)
            )),
            // Another `init` created it at the same moment.
            Some("42P04") => SyncError::new(ErrorKind::Busy, "the journal database was created concurrently").with_hint("run `init` again"),
            _ => err,
        }
    })?;
    tracing::info!(database = %name, "journal database created");
    Ok(())
}

async fn install_upstream(cfg: &Config) -> Result<()> {
    if cfg.supabase.mode != UpstreamMode::Postgres {
        return Err(SyncError::new(ErrorKind::Config, "init --upstream needs [supabase] mode = \"postgres\" and db_url").with_hint(
            "in REST-only setups run `centrovision-sync init --print-upstream-sql` and paste the output into the Supabase SQL editor",
        ));
    }
    let up = upstream::postgres::PgUpstream::new(cfg)?;
    // The scripts are idempotent (DROP ... IF EXISTS before CREATE): their
    // "does not exist, skipping" notices say nothing to the operator.
    up.run_batch("SET client_min_messages = warning").await?;
    let files = upstream::UPSTREAM_SQL.iter().map(|(name, sql)| (format!("sql/upstream/{name}"), sql.to_string()));
    let generated = [
        ("the contract version".to_string(), upstream::contract_sql()),
        ("the project's settings and synced tables".to_string(), upstream::project_sql(cfg)),
    ];
    for (what, sql) in files.chain(generated) {
        // Each file runs in its own transaction (BEGIN/COMMIT inside it).
        up.run_batch(&sql).await.map_err(|e| SyncError { message: format!("installing {what}: {}", e.message), ..e })?;
    }
    let v = up.contract_version().await?;
    tracing::info!(version = ?v, tables = cfg.sync.tables.len(), "upstream functions installed and tables enrolled");
    Ok(())
}

pub(crate) async fn check_wal_level(local: &tokio_postgres::Client) -> Result<()> {
    let level: String =
        local.query_one("SELECT current_setting('wal_level')", &[]).await.map_err(|e| SyncError::from_pg(LOCAL, &e))?.get(0);
    if level != "logical" {
        return Err(SyncError::new(
            ErrorKind::Config,
            format!("the local PostgreSQL runs with wal_level = {level}; logical replication needs wal_level = logical"),
        )
        .with_hint(
            "run ALTER SYSTEM SET wal_level = logical; as a superuser, then restart PostgreSQL (see deploy/postgresql.conf.snippet)",
        ));
    }
    Ok(())
}

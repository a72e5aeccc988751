//! `doctor`: checks everything the service needs and prints the exact fix
//! for each problem. Exit 1 when anything is wrong.

use crate::catalog::{self, quote_ident, quote_literal};
use crate::config::{Config, connect_local};
use crate::store::{JournalStore, Store};
use crate::upstream::{self, CONTRACT_VERSION, Upstream};

struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("  ok    {what}");
    }
    /// Worth knowing, not a problem: not counted (`hint` may be empty).
    fn note(&self, what: &str, hint: &str) {
        println!("  note  {what}");
        for line in hint.lines() {
            println!("        {line}");
        }
    }
    fn fail(&mut self, what: &str, fix: &str) {
        self.problems += 1;
        println!("  FAIL  {what}");
        for line in fix.lines() {
            println!("        fix: {line}");
        }
    }
}

pub async fn doctor(cfg: &Config) -> i32 {
    let mut r = Report { problems: 0 };
    let l = &cfg.local_postgres;
    println!("local database {}:{}/{} as {}", l.host, l.port, l.database, l.user);
    let local = match connect_local(cfg).await {
        Ok(c) => {
            r.ok("connection");
            Some(c)
        }
        Err(e) => {
            r.fail(
                &format!("cannot connect: {e}"),
                "check [local_postgres] host, port, database, user and password, and that PostgreSQL is running",
            );
            None
        }
    };
    if let Some(local) = &local {
        check_local(cfg, local, &mut r).await;
    }
    println!("upstream ({:?} mode)", cfg.supabase.mode);
    match upstream::Client::from_config(cfg) {
        Err(e) => r.fail(&e.to_string(), e.hint.as_deref().unwrap_or("check [supabase]")),
        Ok(up) => match up.health().await {
            Err(e) => r.fail(&format!("unreachable: {e}"), "check [supabase] url/db_url, the key, and the internet connection"),
            Ok(()) => {
                r.ok("reachable");
                match up.contract_version().await {
                    Ok(Some(v)) if v == CONTRACT_VERSION => r.ok(&format!("sync functions installed (version {v})")),
                    Ok(Some(v)) => r.fail(
                        &format!("sync functions are version {v}, this build needs {CONTRACT_VERSION}"),
                        "centrovision-sync init --upstream   (postgres mode)\ncentrovision-sync init --print-upstream-sql   (paste into the Supabase SQL editor)",
                    ),
                    Ok(None) => r.fail(
                        "sync functions (public.centrovision_sync_apply) are not installed upstream",
                        "centrovision-sync init --upstream   (postgres mode)\ncentrovision-sync init --print-upstream-sql   (paste into the Supabase SQL editor)",
                    ),
                    Err(e) => r.fail(&format!("cannot check the sync functions: {e}"), "see the message"),
                }
                if let upstream::Client::Postgres(pg) = &up {
                    check_session_role(cfg, pg, &mut r).await;
                }
            }
        },
    }
    if r.problems == 0 {
        println!("no problems found");
        0
    } else {
        println!("{} problem(s) found", r.problems);
        1
    }
}

async fn check_local(cfg: &Config, local: &tokio_postgres::Client, r: &mut Report) {
    let q = |sql: &'static str| async move { local.query_one(sql, &[]).await };
    if let Ok(row) = q("SELECT current_setting('wal_level'), current_setting('server_encoding'),
                   current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int")
    .await
    {
        let level: String = row.get(0);
        if level == "logical" {
            r.ok("wal_level = logical");
        } else {
            r.fail(&format!("wal_level = {level}"), "ALTER SYSTEM SET wal_level = logical;   -- as a superuser, then restart PostgreSQL");
        }
        let enc: String = row.get(1);
        if enc == "UTF8" {
            r.ok("server_encoding = UTF8");
        } else {
            r.fail(&format!("server_encoding = {enc}"), "the database must use UTF8 (create it with ENCODING 'UTF8')");
        }
        let slots: i32 = row.get(2);
        let senders: i32 = row.get(3);
        if slots < 1 || senders < 1 {
            r.fail(
                "max_replication_slots / max_wal_senders too low",
                "ALTER SYSTEM SET max_replication_slots = 10; ALTER SYSTEM SET max_wal_senders = 10;   -- then restart",
            );
        }
    }
    let user = &cfg.local_postgres.user;
    if let Ok(row) = local.query_one("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user", &[]).await {
        let (sup, repl): (bool, bool) = (row.get(0), row.get(1));
        if sup || repl {
            r.ok("role can stream replication");
        } else {
            r.fail("role lacks REPLICATION", &format!("ALTER ROLE {} REPLICATION;", quote_ident(user)));
        }
        if sup {
            r.note("the service runs as a superuser; a least-privilege role is safer (deploy/least_privilege_role.sql)", "");
        } else {
            // Row-level security hides rows from a role without BYPASSRLS.
            if let Ok(rows) = local
                .query(
                    "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relrowsecurity
                       AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)",
                    &[&cfg.local_postgres.schema, &cfg.sync.tables],
                )
                .await
                && !rows.is_empty()
            {
                let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                r.fail(
                    &format!("row-level security is on for {} and the role cannot bypass it (rows would be invisible)", names.join(", ")),
                    &format!("ALTER ROLE {} BYPASSRLS;   -- as a superuser", quote_ident(user)),
                );
            }
        }
        if !sup {
            let grants = [
                (
                    "SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')",
                    format!("GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {};", quote_ident(user)),
                ),
                (
                    "SELECT has_function_privilege('pg_replication_origin_session_reset()', 'EXECUTE')",
                    format!("GRANT EXECUTE ON FUNCTION pg_replication_origin_session_reset() TO {};", quote_ident(user)),
                ),
                (
                    "SELECT has_parameter_privilege('session_replication_role', 'SET')",
                    format!("GRANT SET ON PARAMETER session_replication_role TO {};", quote_ident(user)),
                ),
                (
                    "SELECT has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')",
                    format!("GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO {};   -- only for init", quote_ident(user)),
                ),
            ];
            for (sql, fix) in grants {
                match local.query_one(sql, &[]).await {
                    Ok(row) if row.get::<_, bool>(0) => {}
                    _ => r.fail("missing privilege for echo suppression / trigger-free apply", &format!("{fix}   -- as a superuser")),
                }
            }
        }
    }
    // Control tables, the journal database, publication, slot, origin.
    let store = Store::new(local, crate::error::LOCAL);
    if let Ok(present) = store.control_tables_present().await {
        if present {
            r.ok("control tables present");
        } else {
            r.fail("control tables missing", "centrovision-sync init");
        }
    }
    if let Ok(true) = store.legacy_journal_present().await {
        r.fail(
            "the journal (_sync_pending) is still in the clinic's database (an earlier version's layout)",
            "centrovision-sync init   -- moves every journaled change to the journal database",
        );
    }
    let jdb = &cfg.local_postgres.journal_database;
    match crate::service::open_journal(cfg, &store).await {
        Err(e) => r.fail(&format!("journal database {}: {e}", quote_literal(jdb)), e.hint.as_deref().unwrap_or("centrovision-sync init")),
        Ok(jc) => {
            let journal = JournalStore::new(&jc, crate::error::JOURNAL);
            match journal.tables_present().await {
                Ok(true) => {
                    r.ok(&format!("journal database {} (_sync_pending, _sync_capture)", quote_literal(jdb)));
                    // Capture positions of another cluster (a restored or moved database).
                    match crate::service::check_cluster(&store, &journal, &cfg.sync.slot_name).await {
                        Ok(()) => r.ok("capture bookkeeping belongs to this cluster"),
                        Err(e) => r.fail(&e.message, e.hint.as_deref().unwrap_or("centrovision-sync init")),
                    }
                }
                Ok(false) => r.fail(&format!("journal database {}: journal tables missing", quote_literal(jdb)), "centrovision-sync init"),
                Err(e) => r.fail(&format!("journal database {}: {e}", quote_literal(jdb)), "centrovision-sync init"),
            }
        }
    }
    match local.query_opt("SELECT plugin, wal_status, active FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.sync.slot_name]).await
    {
        Ok(Some(row)) => {
            let plugin: Option<String> = row.get(0);
            let status: Option<String> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") {
                r.fail(&format!("slot {} uses plugin {plugin:?}", cfg.sync.slot_name), "choose another [sync] slot_name");
            } else if status.as_deref() == Some("lost") {
                r.fail(
                    &format!("slot {} is invalidated (wal_status = lost)", cfg.sync.slot_name),
                    "centrovision-sync resync   -- recreates the slot and reconciles both sides",
                );
            } else {
                r.ok(&format!("slot {} ({})", cfg.sync.slot_name, status.unwrap_or_default()));
            }
        }
        Ok(None) => r.fail(&format!("slot {} does not exist", cfg.sync.slot_name), "centrovision-sync init"),
        Err(_) => {}
    }
    if let Ok(row) = local
        .query_one(
            "SELECT coalesce(array_agg(tablename::text), '{}') FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2",
            &[&cfg.sync.publication_name, &cfg.local_postgres.schema],
        )
        .await
    {
        let published: Vec<String> = row.get(0);
        let missing: Vec<&String> = cfg.sync.tables.iter().filter(|t| !published.contains(t)).collect();
        if missing.is_empty() {
            r.ok(&format!("publication {} covers the {} tables", cfg.sync.publication_name, cfg.sync.tables.len()));
        } else {
            r.fail(
                &format!(
                    "publication {} lacks: {}",
                    cfg.sync.publication_name,
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                "centrovision-sync init",
            );
        }
    }
    if let Ok(row) =
        local.query_one("SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)", &[&cfg.sync.origin_name]).await
    {
        if row.get::<_, bool>(0) {
            r.ok(&format!("replication origin {}", quote_literal(&cfg.sync.origin_name)));
        } else {
            r.fail(&format!("replication origin {} missing", quote_literal(&cfg.sync.origin_name)), "centrovision-sync init");
        }
    }
    // Tables.
    match catalog::load(local, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await {
        Ok(tables) => {
            let mut bad = 0;
            for t in &cfg.sync.tables {
                match tables.get(t) {
                    None => {
                        bad += 1;
                        r.fail(&format!("table {t} does not exist locally"), "create it, or remove it from [sync] tables");
                    }
                    Some(tab) => {
                        if let Some(why) = tab.unsyncable_reason() {
                            bad += 1;
                            match tab.replica_identity_problem() {
                                Some((what, fix)) if why.starts_with(&what) => r.fail(&what, &fix),
                                _ => r.fail(&why, "see above"),
                            }
                        }
                    }
                }
            }
            if bad == 0 {
                r.ok(&format!("{} tables have a primary key and updated_at", cfg.sync.tables.len()));
            }
            let mut no_write = Vec::new();
            for t in tables.values() {
                let ok = local
                    .query_one("SELECT has_table_privilege($1, 'SELECT, INSERT, UPDATE, DELETE')", &[&t.qualified()])
                    .await
                    .map(|row| row.get::<_, bool>(0))
                    .unwrap_or(false);
                if !ok {
                    no_write.push(t.qualified());
                }
            }
            branch_scopes(cfg, &tables, r);
            if no_write.is_empty() {
                r.ok("role can read and write the synced tables");
            } else {
                r.fail(
                    &format!("role cannot read and write {}", no_write.join(", ")),
                    &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {};", no_write.join(", "), quote_ident(user)),
                );
            }
        }
        Err(e) => r.fail(&format!("cannot read the catalog: {e}"), "see the message"),
    }
}

/// Each table's branch scope (`[sync] branch_ids`, `[sync.table.<name>] scope`).
fn branch_scopes(cfg: &Config, tables: &std::collections::BTreeMap<String, catalog::Table>, r: &mut Report) {
    match crate::scope::resolve(cfg, tables) {
        Ok(s) => {
            match &s.branch_ids {
                None => r.ok("branch scope: none ([sync] branch_ids absent: every branch's rows are synced)"),
                Some(ids) => r.ok(&format!("branch scope: branches {}", ids.join(", "))),
            }
            for (t, sc) in &s.tables {
                let how = if s.overridden.contains(t) { "set in [sync.table]" } else { "inferred" };
                r.ok(&format!("scope of {t}: {} ({how})", sc.describe()));
            }
        }
        Err(e) => r.fail(&e.to_string(), e.hint.as_deref().unwrap_or("see the message")),
    }
}

/// Postgres mode: whether batches can keep `session_replication_role =
/// replica` for the session (see `upstream::postgres`). Either way the writes
/// are the same; without it each batch re-plans.
async fn check_session_role(cfg: &Config, pg: &upstream::postgres::PgUpstream, r: &mut Report) {
    match pg.may_keep_replica().await {
        Ok(true) => r.ok("batches keep session_replication_role = replica for the session (no re-planning per batch)"),
        Ok(false) => {
            let user = cfg.upstream_pg_config().and_then(|c| c.get_user().map(quote_ident)).unwrap_or_else(|| "<the db_url user>".into());
            r.note(
                upstream::postgres::REPLICA_REFUSED,
                &format!(
                    "on Supabase the postgres role may; on another PostgreSQL 15+, as a superuser:\n\
                     GRANT SET ON PARAMETER session_replication_role TO {user};"
                ),
            );
        }
        Err(e) => r.fail(&format!("cannot check the session role: {e}"), "see the message"),
    }
}

//! `status`: answers "is it in sync?" from the local database, plus the
//! count of conflicts decided upstream when upstream answers in time.

use std::time::Duration;

use crate::config::{Config, LocalDbs};
use crate::error::Result;
use crate::status;
use crate::upstream::{self, Upstream};

/// How long `status` waits for the conflict count (it must stay quick offline).
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);

pub async fn status(cfg: &Config, json: bool) -> Result<()> {
    let dbs = LocalDbs::connect(cfg).await?;
    let mut st = status::gather(cfg, &dbs).await?;
    st.conflicts = conflict_count(cfg).await;
    let scopes = branch_scopes(cfg, &dbs.local).await;
    if json {
        let mut v = serde_json::to_value(&st).expect("serializable");
        v["branch_scope"] = serde_json::json!({
            "branch_ids": scopes.as_ref().ok().and_then(|s| s.branch_ids.clone()),
            "tables": scopes.as_ref().ok().map(|s| s.tables.iter().map(|(t, sc)| (t.clone(), sc.describe())).collect::<std::collections::BTreeMap<_, _>>()),
            "error": scopes.as_ref().err().map(|e| e.to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serializable"));
    } else {
        print!("{}", status::render(cfg, &st));
        match &scopes {
            Ok(s) => {
                match &s.branch_ids {
                    None => println!("branch scope: none (every branch's rows are synced)"),
                    Some(ids) => println!("branch scope: branches {}", ids.join(", ")),
                }
                for (t, sc) in &s.tables {
                    println!("  {t}: {}", sc.describe());
                }
            }
            Err(e) => println!("branch scope: {e}"),
        }
        if st.conflicts.is_none() {
            println!("conflicts decided upstream: unknown (upstream did not answer within {} s)", UPSTREAM_WAIT.as_secs());
        }
    }
    Ok(())
}

/// The upstream conflict log's size, or None when upstream is unreachable,
/// slow or outdated.
async fn conflict_count(cfg: &Config) -> Option<i64> {
    let up = upstream::Client::from_config(cfg).ok()?;
    tokio::time::timeout(UPSTREAM_WAIT, up.conflict_count(None)).await.ok()?.ok()
}

/// Every synced table's branch scope, from the local catalogue.
async fn branch_scopes(cfg: &Config, local: &tokio_postgres::Client) -> Result<crate::scope::Scopes> {
    let tables = crate::catalog::load(local, crate::error::Side::Local, &cfg.local_postgres.schema, &cfg.sync.tables).await?;
    crate::scope::resolve(cfg, &tables)
}

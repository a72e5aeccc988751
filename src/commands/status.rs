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
    if json {
        println!("{}", serde_json::to_string_pretty(&st).expect("serializable"));
    } else {
        print!("{}", status::render(cfg, &st));
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

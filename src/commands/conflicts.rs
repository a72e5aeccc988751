//! `conflicts`: what the conflict rule decided, for a person. Reads the
//! upstream conflict log (`sql/upstream/003_row_state.sql`): every version
//! that lost, with the winner, both images and the rule.

use crate::config::Config;
use crate::error::{ErrorKind, Result, SyncError};
use crate::upstream::{self, ConflictQuery, Upstream};

/// Prints the conflicts, newest first: a table for people, or the JSON
/// array (`--json`).
pub async fn conflicts(cfg: &Config, tables: &[String], since: Option<&str>, limit: i64, json: bool) -> Result<()> {
    let up = upstream::Client::from_config(cfg)?;
    crate::service::check_contract(&up).await?;
    let q = ConflictQuery { schema: &cfg.supabase.schema, tables: (!tables.is_empty()).then_some(tables), since, limit };
    let text = up.conflicts(&q).await?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| SyncError::new(ErrorKind::Contract, format!("the upstream conflict log answered something unexpected ({e})")))?;
    if list.is_empty() {
        println!("no conflicts{}", since.map(|s| format!(" since {s}")).unwrap_or_default());
        return Ok(());
    }
    let side = |v: &serde_json::Value| {
        let what = if v["deleted"].as_bool() == Some(true) { "delete" } else { "edit" };
        format!("{what} by {} (stamp {})", v["writer"].as_str().unwrap_or("?"), v["stamp"].as_str().unwrap_or("none"))
    };
    for c in &list {
        println!(
            "{}  {} {}\n    kept:    {}\n    lost:    {}\n    rule:    {}",
            c["decided_at"].as_str().unwrap_or(""),
            c["table"].as_str().unwrap_or(""),
            c["key"].as_str().unwrap_or(""),
            side(&c["winner"]),
            side(&c["loser"]),
            c["rule"].as_str().unwrap_or("")
        );
    }
    println!("{} conflict(s); `conflicts --json` shows both row images", list.len());
    Ok(())
}

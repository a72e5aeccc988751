//! The CLI's commands. Each returns an exit code; `main.rs` only parses
//! arguments and sets up logging.
//!
//! A thin layer: parse the arguments, call the library ([`crate::service`]
//! for `run` and `once`, [`crate::recovery`] for `replay`, `verify` and
//! `resync`), print, and map the outcome to an exit code. Nothing outside
//! this module imports from it.
//!
//! Exit codes: 0 success, 1 a runtime failure or (for `doctor`) a problem
//! found, 2 bad configuration or arguments.

mod conflicts;
mod doctor;
mod init;
mod recovery;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::service;

#[derive(Parser, Debug)]
#[command(name = "centrovision-sync", version, about = "Two-way sync between a clinic's PostgreSQL and Supabase")]
pub struct Cli {
    /// Config file (default: $CENTROVISION_SYNC_CONFIG, else ./config.toml)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream local changes upstream and poll upstream changes until SIGINT/SIGTERM
    Run,
    /// Create the control tables, publication, slot and origin (safe to run twice)
    Init {
        /// Also install the upstream SQL functions (postgres mode)
        #[arg(long)]
        upstream: bool,
        /// Print the upstream SQL to paste into the Supabase SQL editor, and exit
        #[arg(long)]
        print_upstream_sql: bool,
        /// Journal every row that exists locally now, so rows from before the
        /// slot existed are pushed too (once; again only with --force)
        #[arg(long)]
        upload_existing: bool,
        /// With --upload-existing: upload again even if it was done before
        #[arg(long, requires = "upload_existing")]
        force: bool,
    },
    /// Check the setup and print the exact fix for each problem (exit 1 if any)
    Doctor,
    /// Show whether data is in sync
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Capture everything committed before it started, push it, then exit
    Once,
    /// Re-send journaled changes from a saved LSN (after an upstream restore)
    Replay {
        /// First commit LSN to replay, e.g. 0/16B3748 (see `status`)
        #[arg(long, value_parser = recovery::parse_lsn)]
        from_lsn: crate::lsn::Lsn,
        /// Last commit LSN to replay
        #[arg(long, value_parser = recovery::parse_lsn)]
        to_lsn: Option<crate::lsn::Lsn>,
        /// Only these tables (repeatable)
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Print what would be sent, send nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Compare both sides (exit 0 equal, 1 drift); --repair reconciles
    Verify {
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        repair: bool,
        /// Compare the study-files mirror ([storage] local_dir) with the buckets instead
        #[arg(long)]
        files: bool,
    },
    /// Recreate a lost or missing replication slot and reconcile both sides
    Resync,
    /// Remove the local rows of branches outside [sync] branch_ids (after a
    /// branch was dropped from it); without --yes only counts them
    DropBranchRows {
        /// Remove them (nothing is deleted upstream)
        #[arg(long)]
        yes: bool,
    },
    /// List what the conflict rule decided upstream (the versions that lost)
    Conflicts {
        /// Only these tables (repeatable)
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Only conflicts decided at or after this time, e.g. 2026-12-01 or "2026-12-01 10:00-06"
        #[arg(long)]
        since: Option<String>,
        /// At most this many, newest first
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Exit code of a check: 0 equal, 1 drift or failure.
fn finish(r: crate::error::Result<bool>) -> i32 {
    match r {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_FAILURE,
        Err(e) => {
            tracing::error!(class = ?e.class(), "{e}");
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// The config holds secrets: say so when others can read it.
fn warn_if_config_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the config file is readable by other users and holds secrets; run: chmod 600 {}",
                path.display()
            );
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub async fn dispatch(cli: Cli) -> i32 {
    if let Command::Init { print_upstream_sql: true, .. } = cli.command {
        // With a config, also this project's settings and table enrolment.
        let cfg = Config::load(&config::resolve_path(cli.config.as_deref())).ok();
        print!("{}", crate::upstream::upstream_script(cfg.as_ref()));
        return EXIT_OK;
    }
    let path = config::resolve_path(cli.config.as_deref());
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let log_to_file = matches!(cli.command, Command::Run | Command::Once);
    if log_to_file {
        if let Err(e) = crate::logging::init(&cfg.logging) {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    } else {
        crate::logging::init_console(&cfg.logging.level);
    }
    warn_if_config_readable_by_others(&path);
    let result = match cli.command {
        Command::Run => service::run(&cfg).await,
        Command::Once => service::once(&cfg).await,
        Command::Init { upstream, upload_existing, force, .. } => init::init(&cfg, upstream, upload_existing.then_some(force)).await,
        Command::Doctor => return doctor::doctor(&cfg).await,
        Command::Status { json } => status::status(&cfg, json).await,
        Command::Replay { from_lsn, to_lsn, tables, dry_run } => {
            if let Err(e) = recovery::check_tables(&cfg, &tables) {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
            recovery::replay(&cfg, from_lsn, to_lsn, tables, dry_run).await
        }
        Command::Verify { files: true, json, .. } => return finish(recovery::verify_files(&cfg, json).await),
        Command::Verify { tables, json, repair, files: false } => {
            if let Err(e) = recovery::check_tables(&cfg, &tables) {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
            return finish(recovery::verify(&cfg, tables, json, repair).await);
        }
        Command::Resync => return finish(recovery::resync(&cfg).await),
        Command::DropBranchRows { yes } => drop_branch_rows(&cfg, yes).await,
        Command::Conflicts { tables, since, limit, json } => {
            if let Err(e) = recovery::check_tables(&cfg, &tables) {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
            conflicts::conflicts(&cfg, &tables, since.as_deref(), limit, json).await
        }
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!(class = ?e.class(), "{e}");
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// `drop-branch-rows [--yes]`: prints, per table, the rows removed (or
/// removable) and the rows of other branches kept as parents.
async fn drop_branch_rows(cfg: &Config, yes: bool) -> crate::error::Result<()> {
    let dropped = crate::down::drop_out_of_scope_rows(cfg, yes).await?;
    if dropped.is_empty() {
        println!("no local rows outside [sync] branch_ids");
    }
    for d in &dropped {
        let verb = if yes { "removed" } else { "would remove" };
        println!("{}: {verb} {} rows; kept {} rows other rows refer to", d.table, d.removed, d.kept_as_parents);
    }
    if !yes && dropped.iter().any(|d| d.removed > 0) {
        println!("nothing removed yet: run again with --yes (nothing is deleted upstream)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compile-time check, not a test to run: the demo (and any service
    /// wrapper) spawns `dispatch` on a runtime, so its future must stay
    /// `Send`.
    #[allow(dead_code, reason = "a compile-time check, never called")]
    fn dispatch_can_be_spawned(cli: Cli) {
        fn spawnable<F: Future + Send + 'static>(_: F) {}
        spawnable(dispatch(cli));
    }
}

//! Logging: structured `tracing` events to the console and, when `[logging]
//! file` is set, to a file rotated by size (`max_size_mb`, keeping
//! `max_files` old files) through the `file-rotate` crate.
//!
//! Third-party crates log at `warn` and above only: their debug output would
//! put row values (patient data) into the log. `RUST_LOG` can raise them,
//! except the ones that log statement parameters ([`ROW_VALUE_LOGGERS`]). Secrets are never logged; the
//! config types redact them.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Logging;

/// Crates whose debug output carries row values (tokio_postgres logs every
/// statement's parameters; reqwest the request URLs with their filter
/// values): held at `info` whatever `RUST_LOG` asks.
const ROW_VALUE_LOGGERS: [&str; 2] = ["tokio_postgres", "reqwest"];

fn filter(level: &str) -> EnvFilter {
    let f = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(format!("centrovision_sync={level},warn")),
    };
    ROW_VALUE_LOGGERS.iter().fold(f, |f, target| f.add_directive(format!("{target}=info").parse().expect("a valid directive")))
}

/// Console-only logging, for before the config is read.
pub fn init_console(level: &str) {
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false))
        .try_init();
}

/// Console plus the rotating file. Errors say which key to fix.
pub fn init(cfg: &Logging) -> Result<(), String> {
    let console =
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false);
    let Some(path) = &cfg.file else {
        let _ = tracing_subscriber::registry().with(filter(&cfg.level)).with(console).try_init();
        return Ok(());
    };
    // file-rotate panics when it cannot create the directory: check first.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("Config key [logging] file: cannot create directory {} ({e})", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("Config key [logging] file: cannot write {} ({e})", path.display()))?;
    let bytes = (cfg.max_size_mb * 1024.0 * 1024.0) as usize;
    let rotating =
        FileRotate::new(path, AppendCount::new(cfg.max_files), ContentLimit::BytesSurpassed(bytes.max(1)), Compression::None, None);
    let file = tracing_subscriber::fmt::layer().with_writer(Mutex::new(rotating)).with_ansi(false).with_target(false);
    let _ = tracing_subscriber::registry().with(filter(&cfg.level)).with(console).with(file).try_init();
    Ok(())
}

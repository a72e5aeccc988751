//! Entry point: parse the command line, set up logging, dispatch.

use clap::Parser;
use centrovision_sync::commands::{Cli, dispatch};

fn main() {
    let cli = Cli::parse();
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(dispatch(cli));
    std::process::exit(code);
}

//! Entry point: parse the command line, set up logging, dispatch.

use centrovision_sync::commands::{Cli, dispatch};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(dispatch(cli));
    std::process::exit(code);
}

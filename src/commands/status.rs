//! `status`: answers "is it in sync?" from the local database.

use crate::config::{Config, connect_local};
use crate::error::Result;
use crate::status;

pub async fn status(cfg: &Config, json: bool) -> Result<()> {
    let local = connect_local(cfg).await?;
    let st = status::gather(cfg, &local).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st).expect("serializable"));
    } else {
        print!("{}", status::render(cfg, &st));
    }
    Ok(())
}

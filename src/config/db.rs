//! The connection factory for the local database: every module that talks
//! to the clinic's PostgreSQL opens its connection here, from the config.

use super::Config;
use crate::error::{Result, SyncError};

/// Opens a plain connection to the local database.
pub async fn connect_local(cfg: &Config) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        cfg.local_pg_config().connect(tokio_postgres::NoTls).await.map_err(|e| SyncError::from_pg(crate::error::LOCAL, &e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

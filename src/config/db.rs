//! The connection factory for the local database: every module that talks
//! to the clinic's PostgreSQL opens its connection here, from the config.

use super::Config;
use crate::error::{Result, SyncError};

/// Opens a plain connection to the local database.
///
/// Every session runs with `synchronous_commit = on`, whatever the server,
/// database or role says (a startup option outranks those). The journal
/// writer confirms the slot once its COMMIT returns: an asynchronous commit
/// that a server crash then undoes would lose the change for good (the slot
/// has moved past it). The down path, the pusher's marks and recovery
/// likewise act on what their COMMIT returned (alerts, status, the next
/// page), so no local session of the service commits asynchronously.
pub async fn connect_local(cfg: &Config) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        cfg.local_pg_config().connect(tokio_postgres::NoTls).await.map_err(|e| SyncError::from_pg(crate::error::LOCAL, &e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

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

/// Opens a connection to the journal database
/// (`[local_postgres] journal_database`), with the same session settings as
/// [`connect_local`].
pub async fn connect_journal(cfg: &Config) -> Result<tokio_postgres::Client> {
    let (client, conn) = cfg.journal_pg_config().connect(tokio_postgres::NoTls).await.map_err(|e| {
        let err = SyncError::from_pg(crate::error::JOURNAL, &e);
        if err.code.as_deref() == Some("3D000") {
            err.with_hint("the journal database does not exist yet: run `centrovision-sync init` (it creates it)")
        } else {
            err
        }
    })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Both local databases, for readers of the service's state (`status`, the
/// status page): the clinic's database and the journal database.
pub struct LocalDbs {
    pub local: tokio_postgres::Client,
    pub journal: tokio_postgres::Client,
}

impl LocalDbs {
    pub async fn connect(cfg: &Config) -> Result<LocalDbs> {
        Ok(LocalDbs { local: connect_local(cfg).await?, journal: connect_journal(cfg).await? })
    }

    pub fn is_closed(&self) -> bool {
        self.local.is_closed() || self.journal.is_closed()
    }
}

//! `_sync_state`: what the running service knows that `status` (another
//! process) should show — upstream connectivity and the raised alerts. One
//! row per key, upserted by the health check (see [`crate::store`]).

use chrono::{DateTime, Utc};

use super::Store;
use crate::error::Result;

/// One `_sync_state` row.
#[derive(Debug, Clone)]
pub struct StateEntry {
    pub key: String,
    pub value: Option<String>,
    /// timestamptz text.
    pub since: Option<String>,
}

impl Store<'_> {
    /// Records upstream connectivity (`online` / `offline`) and since when.
    pub async fn set_upstream_state(&self, value: &str, since: DateTime<Utc>) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO _sync_state (key, value, since, updated_at) VALUES ('upstream', $1, $2, now())
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, since = EXCLUDED.since, updated_at = now()",
                &[&value, &since],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Makes the alert rows (`alert:<name>`) match `active` (name, raised
    /// since): resolved alerts are removed, new ones added, and a row keeps
    /// the time it was first raised. Every statement is tried; the first
    /// error is returned.
    pub async fn set_alerts(&self, active: &[(String, DateTime<Utc>)]) -> Result<()> {
        let keys: Vec<String> = active.iter().map(|(k, _)| format!("alert:{k}")).collect();
        let mut first_err =
            self.client.execute("DELETE FROM _sync_state WHERE key LIKE 'alert:%' AND NOT (key = ANY($1))", &[&keys]).await.err();
        for (key, (_, since)) in keys.iter().zip(active) {
            let r = self
                .client
                .execute(
                    "INSERT INTO _sync_state (key, value, since) VALUES ($1, 'raised', $2) ON CONFLICT (key) DO UPDATE SET updated_at = now()",
                    &[key, since],
                )
                .await;
            first_err = first_err.or(r.err());
        }
        match first_err {
            Some(e) => Err(self.err(e)),
            None => Ok(()),
        }
    }

    /// Sets a note the running service keeps for `status` under `key`
    /// (None removes it); `since` is when it was last set.
    pub async fn set_note(&self, key: &str, value: Option<&str>) -> Result<()> {
        let r = match value {
            Some(v) => {
                self.client
                    .execute(
                        "INSERT INTO _sync_state (key, value, since, updated_at) VALUES ($1, $2, now(), now())
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, since = now(), updated_at = now()",
                        &[&key, &v],
                    )
                    .await
            }
            None => self.client.execute("DELETE FROM _sync_state WHERE key = $1", &[&key]).await,
        };
        r.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The capture epoch `init` last tied this clinic's database to, as kept
    /// in the clinic's own database (key `capture:epoch`): the journal
    /// database keeps the epochs, but a clinic database moved or restored
    /// without it must still start a later epoch than any it wrote before
    /// ([`super::JournalStore::tie_to_cluster`]).
    pub async fn capture_epoch_mirror(&self) -> Result<Option<i32>> {
        let row = self.client.query_opt("SELECT value FROM _sync_state WHERE key = 'capture:epoch'", &[]).await.map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).and_then(|v| v.parse().ok()))
    }

    /// Every `_sync_state` row.
    pub async fn service_state(&self) -> Result<Vec<StateEntry>> {
        let rows = self.client.query("SELECT key, value, since::text FROM _sync_state", &[]).await.map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| StateEntry { key: r.get(0), value: r.get(1), since: r.get(2) }).collect())
    }
}

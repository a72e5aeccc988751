//! Moving an older installation's journal out of the clinic's database.
//!
//! Before the journal database existed, `_sync_pending`, `_sync_capture`
//! and `_sync_epoch` lived in the clinic's own database. `init` moves them,
//! and nothing journaled may be lost or repeated on the way:
//!
//! 1. In one transaction of the journal database, every row is copied with
//!    its id, positions and epoch (binary COPY, streamed: bounded memory
//!    whatever the backlog); rows already there (an interrupted earlier
//!    move) are skipped by id. The copy is checked row for row before the
//!    transaction commits. New ids continue after the old id sequence.
//!    The rows keep their per-row `synced` marks, which the journal still
//!    honours above the pusher's cursor (`sql/journal/002_push_cursor.sql`).
//! 2. Only after that commit are the old tables dropped.
//!
//! A crash between the two leaves both copies; the next `init` repeats step
//! 1 (adding nothing) and then drops the old ones. `run`, `once` and
//! `status` refuse to start while old tables remain ([`Store::legacy_journal_present`]),
//! so no new change can land in the old journal meanwhile.

use futures_util::{SinkExt, TryStreamExt};

use super::{JournalStore, Store};
use crate::error::{ErrorKind, Result, SyncError};

/// The journal's columns, in the order both sides copy them.
const PENDING_COLUMNS: &str = "id, table_name, record_id, operation, data, created_at, synced, synced_at, error, retry_count, \
     commit_lsn, ordinal, commit_ts, xid, unchanged_columns, parked_at";

/// What a move carried over.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    pub rows: i64,
    pub unsynced: i64,
}

impl Store<'_> {
    /// Whether the clinic's database still holds journal tables of an older
    /// version (to be moved by `init`).
    pub async fn legacy_journal_present(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass('_sync_pending') IS NOT NULL OR to_regclass('_sync_capture') IS NOT NULL
                    OR to_regclass('_sync_epoch') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}

/// Moves the old journal tables from `local` (the clinic's database) into
/// the journal database behind `journal` (its schema installed), as the
/// module says. Returns None when there was nothing to move.
pub async fn move_journal(local: &Store<'_>, journal: &JournalStore<'_>) -> Result<Option<Moved>> {
    if !local.legacy_journal_present().await? {
        return Ok(None);
    }
    let (l, j) = (local.client, journal.client);
    let le = |e| local.err(e);
    let je = |e| journal.err(e);
    let present =
        |name: &'static str| async move { l.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.map(|r| r.get::<_, bool>(0)) };
    let mut moved = Moved::default();
    j.batch_execute("BEGIN").await.map_err(je)?;
    let result = async {
        journal.lock_for_writing().await?;
        if present("_sync_pending").await.map_err(le)? {
            j.batch_execute("CREATE TEMP TABLE _cvs_moving (LIKE _sync_journal) ON COMMIT DROP").await.map_err(je)?;
            let out = l
                .copy_out(&format!("COPY (SELECT {PENDING_COLUMNS} FROM _sync_pending ORDER BY id) TO STDOUT (FORMAT binary)"))
                .await
                .map_err(le)?;
            let sink = j.copy_in(&format!("COPY _cvs_moving ({PENDING_COLUMNS}) FROM STDIN (FORMAT binary)")).await.map_err(je)?;
            futures_util::pin_mut!(out);
            futures_util::pin_mut!(sink);
            while let Some(chunk) = out.try_next().await.map_err(le)? {
                sink.send(chunk).await.map_err(je)?;
            }
            let copied = sink.finish().await.map_err(je)? as i64;
            j.execute(
                &format!("INSERT INTO _sync_journal ({PENDING_COLUMNS}) SELECT {PENDING_COLUMNS} FROM _cvs_moving ON CONFLICT DO NOTHING"),
                &[],
            )
            .await
            .map_err(je)?;
            // Every old row must now be in the journal under its own id and position.
            let r = j
                .query_one(
                    "SELECT count(*) FILTER (WHERE p.id IS NULL OR p.commit_lsn IS DISTINCT FROM m.commit_lsn
                                              OR p.ordinal IS DISTINCT FROM m.ordinal),
                            count(*) FILTER (WHERE NOT coalesce(m.synced, false))
                     FROM _cvs_moving m LEFT JOIN _sync_journal p ON p.id = m.id",
                    &[],
                )
                .await
                .map_err(je)?;
            let (mismatched, unsynced): (i64, i64) = (r.get(0), r.get(1));
            if mismatched > 0 {
                return Err(SyncError::new(
                    ErrorKind::Refused,
                    format!(
                        "moving the journal: {mismatched} of {copied} rows of the old _sync_pending conflict with rows \
                         the journal database already holds under the same id; nothing was moved or dropped"
                    ),
                )
                .with_hint(
                    "the journal database belongs to another installation: set [local_postgres] journal_database to a new name and run `init` again",
                ));
            }
            // Ids go on after every id the old journal issued, not only those
            // it still holds: upstream's progress of this writer is counted in
            // them, and an old journal pruned empty holds none.
            let issued: i64 = l
                .query_one("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('_sync_pending', 'id')::regclass), 0)", &[])
                .await
                .map_err(le)?
                .get(0);
            j.execute(
                "SELECT setval(pg_get_serial_sequence('_sync_journal', 'id'), greatest(coalesce(max(id), 0), $1) + 1, false) FROM _sync_journal",
                &[&issued],
            )
            .await
            .map_err(je)?;
            moved = Moved { rows: copied, unsynced };
        }
        // The capture positions and epochs, a few rows each (fixed statements).
        const SMALL: [(&str, &str, &str); 2] = [
            (
                "_sync_capture",
                "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]')::text FROM _sync_capture t",
                "INSERT INTO _sync_capture SELECT * FROM jsonb_populate_recordset(NULL::_sync_capture, $1::text::jsonb) ON CONFLICT DO NOTHING",
            ),
            (
                "_sync_epoch",
                "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]')::text FROM _sync_epoch t",
                "INSERT INTO _sync_epoch SELECT * FROM jsonb_populate_recordset(NULL::_sync_epoch, $1::text::jsonb) ON CONFLICT DO NOTHING",
            ),
        ];
        for (table, read, write) in SMALL {
            if !present(table).await.map_err(le)? {
                continue;
            }
            let rows: String = l.query_one(read, &[]).await.map_err(le)?.get(0);
            j.execute(write, &[&rows]).await.map_err(je)?;
        }
        Ok::<_, SyncError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = j.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    j.batch_execute("COMMIT").await.map_err(je)?;
    crate::crash::point("init.after_journal_move");
    l.batch_execute("BEGIN; DROP TABLE IF EXISTS _sync_pending, _sync_capture, _sync_epoch; COMMIT").await.map_err(le)?;
    Ok(Some(moved))
}

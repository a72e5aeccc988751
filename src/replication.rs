//! WAL capture: streams the `pgoutput` slot and journals committed changes.
//!
//! Progress rules:
//! - A decoded transaction's changes go into `_sync_pending` (in the journal
//!   database) in one transaction (see [`crate::journal`]); the slot's flush
//!   LSN is confirmed only after that COMMIT, with the transaction's commit
//!   end LSN.
//! - Commits are grouped: the transactions received within a short delay
//!   (2–50 ms, following what a journal commit costs) share one journal
//!   transaction, so its fsync is paid once per group, not per source
//!   transaction.
//! - Transactions whose commit LSN is at or below the durable
//!   `journaled_lsn` are skipped, so the re-sends that follow a crash (the
//!   last acknowledgement may never have reached the server) are never
//!   journaled twice.
//! - Transactions whose Origin message names our replication origin were
//!   written by the down path; they are dropped (echo suppression).
//! - A keepalive that arrives while no transaction is open and nothing is
//!   uncommitted confirms its WAL end, so a slot whose publication sees no
//!   changes never holds WAL back.
//! - The transport (`pgwire-replication`) parses only Begin/Commit/Message;
//!   everything else is decoded by the pure [`crate::pgoutput`] module.
//!
//! Errors: a broken connection or a restarting server is transient (the
//! supervisor reconnects and resumes from the slot); a missing slot, a wrong
//! password or an undecodable message is definite and needs an operator.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio::sync::{Notify, watch};

use crate::catalog::Table;
use crate::config::{Config, connect_journal, connect_local};
use crate::error::{ErrorKind, Result, Side, SyncError, kind_of_sqlstate};
use crate::journal::{Change, Operation, Writer};
use crate::lsn::Lsn;
use crate::pgoutput::{self, Message, OldTuple, Tuple, Value};

/// Prefix of the logical message `once` emits to find the end of "now".
pub const MARKER_PREFIX: &str = "centrovision_sync.marker";

/// Group commit: at most this many rows share one journal transaction.
const GROUP_ROWS: usize = 20_000;
/// Group commit: a group is committed this long after its first commit
/// arrived, at the earliest...
const GROUP_DELAY_MIN: Duration = Duration::from_millis(2);
/// ...and at the latest. In between, the delay follows what the last journal
/// commit cost (twice that), so committing never takes more than about a
/// third of the loop's time: under a stream of small transactions each
/// journal commit carries many of them, and a lone transaction on a quiet
/// system waits only a couple of milliseconds.
///
/// Why not commit when the server says it has nothing more to send (a
/// keepalive)? It says so between almost every two small transactions; one
/// journal commit (with its fsync) per source transaction capped capture at
/// about 600 transactions/s on this machine, and a clinic at 1,000 saw its
/// changes reach the journal seconds late.
const GROUP_DELAY_MAX: Duration = Duration::from_millis(50);

const JSON_OID: u32 = 114;
const JSONB_OID: u32 = 3802;

/// A relation as announced by pgoutput.
struct Relation {
    name: String,
    synced: bool,
    columns: Vec<RelColumn>,
    key: Option<usize>,
}

struct RelColumn {
    name: String,
    json: bool,
}

/// What a capture run reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureReport {
    pub transactions: u64,
    pub changes: u64,
    pub skipped_echo: u64,
    pub skipped_duplicate: u64,
    pub confirmed: Lsn,
}

/// What decoding needs over one capture run: which changes are journaled
/// (the synced tables, in the local schema, not written under our origin),
/// the relations announced so far, and the transaction being received.
struct Decoder<'a> {
    tables: &'a BTreeMap<String, Table>,
    schema: &'a str,
    origin: &'a str,
    relations: HashMap<u32, Relation>,
    txn: Option<Txn>,
}

struct Txn {
    final_lsn: Lsn,
    commit_time_micros: i64,
    xid: u32,
    skip: bool,
    echo: bool,
    ordinal: i32,
}

/// How far capture has come: every transaction that committed before this
/// position is journaled (or deliberately skipped). The down path waits on
/// it before trusting the journal's tombstones.
pub type Progress = watch::Sender<Lsn>;

fn advance(progress: &Progress, to: Lsn) {
    progress.send_if_modified(|p| {
        if to > *p {
            tracing::trace!(from = %*p, to = %to, "capture progress");
            *p = to;
            true
        } else {
            false
        }
    });
}

/// Streams the slot into the journal until `stop` fires.
pub async fn capture(
    cfg: &Config,
    tables: &BTreeMap<String, Table>,
    mut stop: watch::Receiver<bool>,
    journaled: Arc<Notify>,
    progress: &Progress,
) -> Result<CaptureReport> {
    let journal = connect_journal(cfg).await?;
    let local = connect_local(cfg).await?;
    let mut writer = Writer::new(journal, local, &cfg.sync.slot_name);
    let mut journaled_lsn = writer.journaled_lsn().await?;

    let l = &cfg.local_postgres;
    let rcfg = ReplicationConfig::new(
        l.host.clone(),
        l.user.clone(),
        l.password.expose().to_string(),
        l.database.clone(),
        cfg.sync.slot_name.clone(),
        cfg.sync.publication_name.clone(),
    )
    .with_port(l.port)
    .with_tls(TlsConfig::disabled())
    .with_start_lsn(pgwire_replication::Lsn::ZERO)
    .with_status_interval(Duration::from_millis(500))
    // An idle client wakes the walsender this often; each wake lets it send
    // a keepalive, which is how progress advances past our own writes.
    .with_wakeup_interval(Duration::from_millis(250))
    .with_application_name("centrovision-sync capture")
    .with_options("-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=postgres");
    let mut client = ReplicationClient::connect(rcfg).await.map_err(wire_error)?;
    client.wait_started().await.map_err(wire_error)?;
    tracing::info!(slot = %cfg.sync.slot_name, journaled = %journaled_lsn, "capture started");

    let mut dec =
        Decoder { tables, schema: &cfg.local_postgres.schema, origin: &cfg.sync.origin_name, relations: HashMap::new(), txn: None };
    let mut report = CaptureReport::default();
    // Commits received but not yet journaled durably.
    let mut pending: Option<(Lsn, Lsn)> = None; // (last commit lsn, last end lsn)
    let mut pending_since: Option<Instant> = None;
    let mut group_delay = GROUP_DELAY_MIN;

    let result: Result<()> = async {
        loop {
            // Commit the group when it is full or old enough.
            let deadline = pending_since.map(|t| t + group_delay);
            let event = tokio::select! {
                biased;
                _ = stop.changed() => {
                    if *stop.borrow() { break; } else { continue; }
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap().into()).await }, if deadline.is_some() && dec.txn.is_none() => {
                    let took = Instant::now();
                    flush(&mut writer, &client, &mut pending, &mut pending_since, &mut report, &journaled).await?;
                    group_delay = (took.elapsed() * 2).clamp(GROUP_DELAY_MIN, GROUP_DELAY_MAX);
                    advance(progress, report.confirmed);
                    continue;
                }
                ev = client.recv() => ev.map_err(wire_error)?,
            };
            let Some(event) = event else {
                return Err(SyncError::new(ErrorKind::LocalUnreachable, "replication stream ended"));
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                    let final_lsn = Lsn::from(final_lsn);
                    dec.txn = Some(Txn { final_lsn, commit_time_micros, xid, skip: final_lsn <= journaled_lsn, echo: false, ordinal: 0 });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data).map_err(|e| {
                        SyncError::new(ErrorKind::Decode, format!("cannot decode a pgoutput message: {e}")).with_hint(
                            "this is a bug or an unsupported server version; the slot has not advanced past it, so nothing is lost",
                        )
                    })?;
                    dec.handle(msg, &mut writer, &mut report).await?;
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(t) = dec.txn.take() else {
                        return Err(SyncError::new(ErrorKind::Decode, "replication stream sent a Commit without a Begin"));
                    };
                    if t.skip {
                        if t.echo {
                            report.skipped_echo += 1
                        } else {
                            report.skipped_duplicate += 1;
                            tracing::debug!(xid = t.xid, commit_lsn = %t.final_lsn, journaled = %journaled_lsn, "re-sent transaction skipped: already journaled");
                        }
                    } else {
                        report.transactions += 1;
                        journaled_lsn = t.final_lsn;
                    }
                    let end = Lsn::from(end_lsn);
                    pending = Some((journaled_lsn, end));
                    pending_since.get_or_insert_with(Instant::now);
                    if writer.rows_in_txn() >= GROUP_ROWS {
                        flush(&mut writer, &client, &mut pending, &mut pending_since, &mut report, &journaled).await?;
                        advance(progress, report.confirmed);
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, reply_requested, .. } => {
                    tracing::trace!(wal_end = %Lsn::from(wal_end), reply_requested, in_txn = dec.txn.is_some(), "keepalive");
                    // Nothing open and nothing waiting for the group commit
                    // (which confirms its own end): the server's position is
                    // safe to confirm, so an idle slot never holds WAL back.
                    if dec.txn.is_none() && pending.is_none() && !writer.has_uncommitted() {
                        let w = Lsn::from(wal_end);
                        if w > report.confirmed {
                            client.update_applied_lsn(w.into());
                            report.confirmed = w;
                        }
                        advance(progress, report.confirmed);
                    }
                }
                ReplicationEvent::Message { lsn, transactional, .. } => {
                    // A non-transactional message (e.g. the marker `once`
                    // emits) arrives at its WAL position: everything that
                    // committed before it has been received.
                    if !transactional && dec.txn.is_none() {
                        flush(&mut writer, &client, &mut pending, &mut pending_since, &mut report, &journaled).await?;
                        advance(progress, report.confirmed.max(Lsn::from(lsn)));
                    }
                }
                ReplicationEvent::StoppedAt { .. } => break,
            }
        }
        Ok(())
    }
    .await;

    // Shutdown: keep what is complete, drop what is not.
    let outcome = match result {
        Ok(()) => {
            if dec.txn.is_none() {
                flush(&mut writer, &client, &mut pending, &mut pending_since, &mut report, &journaled).await?;
            }
            writer.abandon().await?;
            Ok(())
        }
        Err(e) => {
            let _ = writer.abandon().await;
            Err(e)
        }
    };
    client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    outcome?;
    // The transport does not flush the last acknowledgement on shutdown:
    // confirm the durable position directly once the slot is released.
    if !report.confirmed.is_zero() {
        confirm_released(cfg, report.confirmed).await?;
    }
    tracing::info!(
        transactions = report.transactions,
        changes = report.changes,
        confirmed = %report.confirmed,
        "capture stopped"
    );
    Ok(report)
}

async fn flush(
    writer: &mut Writer,
    client: &ReplicationClient,
    pending: &mut Option<(Lsn, Lsn)>,
    pending_since: &mut Option<Instant>,
    report: &mut CaptureReport,
    journaled: &Notify,
) -> Result<()> {
    let Some((commit, end)) = pending.take() else { return Ok(()) };
    *pending_since = None;
    let wrote = writer.rows_in_txn() > 0;
    if writer.has_uncommitted() || wrote {
        writer.commit(commit, end).await?;
        journaled.notify_waiters();
        journaled.notify_one();
    }
    if end > report.confirmed {
        client.update_applied_lsn(end.into());
        report.confirmed = end;
    }
    Ok(())
}

impl Decoder<'_> {
    /// Decodes one message: keeps the relation map current, marks echo
    /// transactions, and journals the changes to synced tables.
    async fn handle(&mut self, msg: Message<'_>, writer: &mut Writer, report: &mut CaptureReport) -> Result<()> {
        let Decoder { tables, schema, origin, relations, txn } = self;
        let tables = *tables;
        match msg {
            Message::Relation(r) => {
                // Honoured mid-stream: after ALTER TABLE ... ADD COLUMN the
                // server re-sends the relation before its next change.
                let synced = r.namespace == *schema && tables.contains_key(&r.name);
                let columns: Vec<RelColumn> = r
                    .columns
                    .iter()
                    .map(|c| RelColumn { name: c.name.clone(), json: c.type_oid == JSON_OID || c.type_oid == JSONB_OID })
                    .collect();
                let pk = tables.get(&r.name).and_then(|t| t.pk()).map(|c| c.name.clone());
                let key = pk.and_then(|pk| columns.iter().position(|c| c.name == pk)).or_else(|| r.columns.iter().position(|c| c.is_key));
                relations.insert(r.oid, Relation { name: r.name, synced, columns, key });
            }
            Message::Origin(o) => {
                if let Some(t) = txn.as_mut()
                    && o.name == *origin
                {
                    t.skip = true;
                    t.echo = true;
                }
            }
            Message::Insert(i) => {
                let (t, rel) = change_context(txn, relations, i.relation_oid)?;
                if let (Some(t), Some(rel)) = (t, rel) {
                    let change = image(t, rel, Operation::Insert, &i.new, None)?;
                    write_change(writer, change, tables, report).await?;
                }
            }
            Message::Update(u) => {
                let (t, rel) = change_context(txn, relations, u.relation_oid)?;
                if let (Some(t), Some(rel)) = (t, rel) {
                    let old_full = match &u.old {
                        Some(OldTuple::Full(o)) => Some(o),
                        _ => None,
                    };
                    // A changed primary key: delete the old row, upsert the new.
                    if let Some(OldTuple::Key(old)) | Some(OldTuple::Full(old)) = &u.old {
                        let old_id = key_text(rel, old);
                        let new_id = key_text(rel, &u.new);
                        if old_id.is_some() && old_id != new_id {
                            let del = image(t, rel, Operation::Delete, old, None)?;
                            write_change(writer, del, tables, report).await?;
                        }
                    }
                    let change = image(t, rel, Operation::Update, &u.new, old_full)?;
                    write_change(writer, change, tables, report).await?;
                }
            }
            Message::Delete(d) => {
                let (t, rel) = change_context(txn, relations, d.relation_oid)?;
                if let (Some(t), Some(rel)) = (t, rel) {
                    let old = match &d.old {
                        OldTuple::Key(o) | OldTuple::Full(o) => o,
                    };
                    let change = image(t, rel, Operation::Delete, old, None)?;
                    write_change(writer, change, tables, report).await?;
                }
            }
            Message::Truncate(tr) => {
                for oid in tr.relation_oids {
                    let (t, rel) = change_context(txn, relations, oid)?;
                    if let (Some(t), Some(rel)) = (t, rel) {
                        tracing::warn!(table = %rel.name, "local TRUNCATE captured; upstream rows not newer than it will be deleted");
                        t.ordinal += 1;
                        let change = Change {
                            table: rel.name.clone(),
                            record_id: None,
                            op: Operation::Truncate,
                            data: None,
                            commit_lsn: t.final_lsn,
                            ordinal: t.ordinal,
                            commit_time_micros: t.commit_time_micros,
                            xid: t.xid,
                            unchanged: vec![],
                        };
                        write_change(writer, change, tables, report).await?;
                    }
                }
            }
            Message::Begin(_) | Message::Commit(_) | Message::Type(_) | Message::LogicalMessage(_) => {}
        }
        Ok(())
    }
}

/// The open transaction and relation for a change, or Nones when the change
/// is to be skipped.
fn change_context<'a>(
    txn: &'a mut Option<Txn>,
    relations: &'a HashMap<u32, Relation>,
    oid: u32,
) -> Result<(Option<&'a mut Txn>, Option<&'a Relation>)> {
    let Some(t) = txn.as_mut() else {
        return Err(SyncError::new(ErrorKind::Decode, "replication stream sent a change outside a transaction"));
    };
    if t.skip {
        return Ok((None, None));
    }
    let Some(rel) = relations.get(&oid) else {
        return Err(SyncError::new(ErrorKind::Decode, format!("replication stream sent a change for unknown relation {oid}")));
    };
    if !rel.synced {
        // The publication holds exactly the synced tables, so a change of any
        // other table means it was added (init) after this process started.
        // Dropping it would confirm it away for good: stop here instead, so
        // it waits in the slot until the service restarts with the new list.
        return Err(SyncError::new(
            ErrorKind::Config,
            format!("table {} is published for sync but this process was started without it", rel.name),
        )
        .with_hint("restart the service (systemctl restart centrovision-sync) after `init` to sync the new [sync] tables; its changes wait in the slot meanwhile"));
    }
    Ok((Some(t), Some(rel)))
}

async fn write_change(writer: &mut Writer, mut change: Change, tables: &BTreeMap<String, Table>, report: &mut CaptureReport) -> Result<()> {
    if !change.unchanged.is_empty()
        && let Some(t) = tables.get(&change.table)
    {
        writer.fill_unchanged(&mut change, t).await?;
    }
    report.changes += 1;
    writer.append(change).await
}

fn key_text(rel: &Relation, tuple: &Tuple<'_>) -> Option<String> {
    match tuple.columns.get(rel.key?)? {
        Value::Text(b) | Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Builds the journal image of a tuple: a JSON object of the columns it
/// carries. Unchanged TOAST values are taken from the full old tuple when
/// the table has REPLICA IDENTITY FULL, else listed as unchanged.
fn image(t: &mut Txn, rel: &Relation, op: Operation, tuple: &Tuple<'_>, old_full: Option<&Tuple<'_>>) -> Result<Change> {
    let mut json = String::with_capacity(64 + tuple.columns.len() * 24);
    let mut unchanged = Vec::new();
    json.push('{');
    let mut first = true;
    for (n, v) in tuple.columns.iter().enumerate() {
        let Some(col) = rel.columns.get(n) else {
            return Err(SyncError::new(ErrorKind::Decode, format!("tuple for {} has more columns than its relation message", rel.name)));
        };
        let v = match v {
            Value::UnchangedToast => match old_full.and_then(|o| o.columns.get(n)) {
                Some(ov @ (Value::Text(_) | Value::Null)) => ov,
                _ => {
                    unchanged.push(col.name.clone());
                    continue;
                }
            },
            v => v,
        };
        if !first {
            json.push(',');
        }
        first = false;
        push_json_string(&mut json, &col.name);
        json.push(':');
        match v {
            Value::Null => json.push_str("null"),
            Value::Text(b) => {
                let s = std::str::from_utf8(b).map_err(|_| {
                    SyncError::new(ErrorKind::Decode, format!("column {}.{} is not valid UTF-8", rel.name, col.name))
                        .with_hint("the local database must use the UTF8 encoding")
                })?;
                if col.json {
                    json.push_str(s);
                } else {
                    push_json_string(&mut json, s);
                }
            }
            Value::Binary(_) => {
                return Err(SyncError::new(ErrorKind::Decode, "binary pgoutput values are not supported"));
            }
            Value::UnchangedToast => unreachable!("handled above"),
        }
    }
    json.push('}');
    t.ordinal += 1;
    let record_id = key_text(rel, tuple);
    if record_id.is_none() {
        return Err(SyncError::new(ErrorKind::Config, format!("change to {} carries no primary key value", rel.name))
            .with_hint("every synced table needs a primary key; run `centrovision-sync doctor`"));
    }
    Ok(Change {
        table: rel.name.clone(),
        record_id,
        op,
        data: Some(json),
        commit_lsn: t.final_lsn,
        ordinal: t.ordinal,
        commit_time_micros: t.commit_time_micros,
        xid: t.xid,
        unchanged,
    })
}

/// Benchmark hook for `benches/decode.rs`, not an API: builds the journal
/// image of each tuple with the capture path's own encoder ([`image`]),
/// for a relation as pgoutput announced it, and returns the total JSON
/// length. Only with the `test-utils` feature (or in unit tests).
#[doc(hidden)]
#[cfg(any(test, feature = "test-utils"))]
pub fn encode_image_for_bench(relation: &pgoutput::Relation, tuples: &[Tuple<'_>]) -> Result<usize> {
    let rel = Relation {
        name: relation.name.clone(),
        synced: true,
        columns: relation
            .columns
            .iter()
            .map(|c| RelColumn { name: c.name.clone(), json: c.type_oid == JSON_OID || c.type_oid == JSONB_OID })
            .collect(),
        key: relation.columns.iter().position(|c| c.is_key),
    };
    let mut t = Txn { final_lsn: Lsn::ZERO, commit_time_micros: 0, xid: 0, skip: false, echo: false, ordinal: 0 };
    let mut total = 0;
    for tuple in tuples {
        total += image(&mut t, &rel, Operation::Insert, tuple, None)?.data.map_or(0, |d| d.len());
    }
    Ok(total)
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Confirms `lsn` on the slot after the walsender released it.
async fn confirm_released(cfg: &Config, lsn: Lsn) -> Result<()> {
    let local = connect_local(cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = local
            .query_opt("SELECT active, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.sync.slot_name])
            .await
            .map_err(|e| SyncError::from_pg(crate::error::LOCAL, &e))?;
        let Some(row) = row else { return Ok(()) };
        let active: bool = row.get(0);
        let confirmed: Option<postgres_types::PgLsn> = row.get(1);
        if confirmed.map(Lsn::from).is_some_and(|c| c >= lsn) {
            return Ok(());
        }
        if !active {
            let target = postgres_types::PgLsn::from(lsn);
            local
                .execute("SELECT pg_replication_slot_advance($1, $2)", &[&cfg.sync.slot_name, &target])
                .await
                .map_err(|e| SyncError::from_pg(crate::error::LOCAL, &e).about_slot())?;
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::warn!(lsn = %lsn, "slot still busy; its position will be confirmed on the next start");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Emits a marker into the WAL and returns its position: once capture's
/// progress reaches it, everything committed before the call is journaled.
pub async fn emit_marker(local: &tokio_postgres::Client) -> Result<Lsn> {
    let row = local
        .query_one("SELECT pg_logical_emit_message(false, $1, 'now')", &[&MARKER_PREFIX])
        .await
        .map_err(|e| SyncError::from_pg(crate::error::LOCAL, &e))?;
    Ok(Lsn::from(row.get::<_, postgres_types::PgLsn>(0)))
}

/// Waits until capture's progress reaches `target`, or `timeout` passes.
pub async fn wait_progress(progress: &mut watch::Receiver<Lsn>, target: Lsn, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, progress.wait_for(|p| *p >= target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(SyncError::new(ErrorKind::LocalUnreachable, "capture stopped before reaching the needed position")),
        Err(_) => Err(SyncError::new(
            ErrorKind::Timeout,
            format!("capture has not journaled the WAL up to {target} within {} s; will retry", timeout.as_secs()),
        )),
    }
}

/// Classifies a replication transport error.
///
/// `pgwire-replication` hands the server's ErrorResponse over as text
/// ("message (SQLSTATE code)"), so this is the one place that reads a
/// driver's text: for the SQLSTATE, and for the walsender's wording of an
/// invalidated slot (its SQLSTATE, 55000, only says "object not in
/// prerequisite state"). Everything downstream matches the kind.
fn wire_error(e: PgWireError) -> SyncError {
    let text = e.to_string();
    let message = format!("local database (replication): {text}");
    let kind = match &e {
        PgWireError::Auth(_) => {
            return SyncError::new(ErrorKind::Auth, message)
                .with_hint("check [local_postgres] user and password; the user needs the REPLICATION attribute")
                .with_source(e);
        }
        PgWireError::Io(_) | PgWireError::Task(_) => ErrorKind::LocalUnreachable,
        PgWireError::Tls(_) => ErrorKind::Config,
        PgWireError::Protocol(_) | PgWireError::MessageTooLarge { .. } => ErrorKind::Decode,
        _ => ErrorKind::Refused,
    };
    let code = text.split("SQLSTATE ").nth(1).map(|s| s.trim_end_matches(')').trim().to_string());
    let slot_invalidated = text.contains("can no longer get changes") || text.contains("invalidated");
    let Some(code) = code else {
        let kind = if slot_invalidated { ErrorKind::SlotInvalidated } else { kind };
        return SyncError::new(kind, message).with_source(e);
    };
    let kind = match code.as_str() {
        _ if slot_invalidated => ErrorKind::SlotInvalidated,
        // The walsender's 42704 is the slot (or, while streaming, the
        // publication) not existing: either way capture cannot go on.
        "42704" => ErrorKind::SlotMissing,
        // A previous session may still be exiting: retried.
        "55006" => ErrorKind::SlotBusy,
        c => kind_of_sqlstate(Side::Local, c),
    };
    let mut err = SyncError::new(kind, message).with_code(code.as_str()).with_source(e);
    match code.as_str() {
        "28P01" | "28000" => err = err.with_hint("check [local_postgres] user and password"),
        "42501" => err = err.with_hint("the user needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)"),
        _ => {}
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> SyncError {
        wire_error(PgWireError::Server(text.to_string()))
    }

    #[test]
    fn a_missing_slot_is_classified_from_the_walsenders_sqlstate() {
        let e = server("replication slot \"s\" does not exist (SQLSTATE 42704)");
        assert_eq!(e.kind, ErrorKind::SlotMissing);
        assert_eq!(e.code.as_deref(), Some("42704"));
        assert!(e.to_string().contains("run `centrovision-sync init` (or `resync` if it was dropped)"), "{e}");
    }

    #[test]
    fn an_active_slot_is_busy_and_retried() {
        let e = server("replication slot \"s\" is active for PID 4242 (SQLSTATE 55006)");
        assert_eq!(e.kind, ErrorKind::SlotBusy);
        assert!(e.is_transient());
        assert!(e.to_string().contains("is a second centrovision-sync running?"), "{e}");
    }

    #[test]
    fn an_invalidated_slot_is_recognized_by_the_walsenders_words() {
        let e = server("can no longer get changes from replication slot \"s\" (SQLSTATE 55000)");
        assert_eq!(e.kind, ErrorKind::SlotInvalidated);
        assert!(!e.is_transient());
        let e = server("cannot read from logical replication slot \"s\": it was invalidated (SQLSTATE 55000)");
        assert_eq!(e.kind, ErrorKind::SlotInvalidated);
        // 55000 alone is any object not in the needed state.
        let e = server("logical decoding requires wal_level >= logical (SQLSTATE 55000)");
        assert_eq!(e.kind, ErrorKind::Busy);
    }

    #[test]
    fn a_broken_stream_is_the_local_database_unreachable() {
        let e = wire_error(PgWireError::Io(Arc::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))));
        assert_eq!(e.kind, ErrorKind::LocalUnreachable);
        assert!(e.is_outage());
        assert!(e.to_string().starts_with("local database (replication): "), "{e}");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()), Some("io error: reset".to_string()));
    }

    #[test]
    fn wrong_credentials_and_missing_privileges_say_what_to_fix() {
        let e = wire_error(PgWireError::Auth("password authentication failed".into()));
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.to_string().contains("REPLICATION attribute"), "{e}");
        let e = server("password authentication failed for user \"x\" (SQLSTATE 28P01)");
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.to_string().contains("check [local_postgres] user and password"), "{e}");
        let e = server("permission denied to start WAL sender (SQLSTATE 42501)");
        assert_eq!(e.kind, ErrorKind::Privilege);
        assert!(e.to_string().contains("ALTER ROLE ... REPLICATION"), "{e}");
    }

    #[test]
    fn a_server_shutting_down_is_an_outage_not_an_operator_problem() {
        let e = server("terminating connection due to administrator command (SQLSTATE 57P01)");
        assert_eq!(e.kind, ErrorKind::LocalUnreachable);
    }
}

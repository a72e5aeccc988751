//! Errors, classified once where they arise.
//!
//! Every error carries an [`ErrorKind`]: what went wrong, as far as deciding
//! what to do next needs to know. It is set where the error arises — the
//! PostgreSQL classifier ([`SyncError::from_pg`], which knows the [`Side`]),
//! the PostgREST classifier (`upstream::rest::classify`), the replication
//! transport's classifier (`replication::wire_error`) — and callers match the
//! kind, never the message text.
//!
//! One function, [`policy`], turns a kind into what happens next. Every
//! failure falls in one of three classes:
//!
//! - [`Class::Transient`]: the network, a restarting server, a timeout, a
//!   rate limit. Retry with exponential backoff and jitter; nothing is lost
//!   because the journal and the watermarks only move after success.
//! - [`Class::Operator`]: definite errors that no retry fixes and that need a
//!   person: a wrong key or password, a missing table or function, missing
//!   privileges, a lost slot. Alert once, with a hint saying what to fix, and
//!   back off slowly instead of looping.
//! - [`Class::Data`]: tied to one row (a value upstream rejects). Park that row
//!   with its error; the rest keeps flowing.
//!
//! An error keeps what it was built from as its [`std::error::Error::source`]
//! (the server's error, the transport's error chain), while its message and
//! hint are the words the operator reads.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Operator,
    Data,
}

/// Which database an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The clinic's PostgreSQL.
    Local,
    /// Supabase (its database, or its HTTP API).
    Upstream,
}

/// What went wrong. [`policy`] says what it means for retrying and alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The local database cannot be reached: refused or broken connection,
    /// a server shutting down or restarting (SQLSTATE 08, 57P).
    LocalUnreachable,
    /// Upstream cannot be reached: network, TLS handshake, a gateway that
    /// cannot reach the database (5xx, PGRST000–003), or something that is
    /// not upstream answering in its place (a proxy, a captive portal).
    UpstreamUnreachable,
    /// No answer in time: an HTTP timeout or 408, `request_timeout_seconds`,
    /// or capture not reaching a needed WAL position in time.
    Timeout,
    /// Upstream asked us to slow down (HTTP 429, with `Retry-After`).
    RateLimited,
    /// The server is there but cannot do it now: a serialization failure
    /// or deadlock, a lock or statement timeout, a lack of resources, a 5xx
    /// that carries a database error.
    Busy,
    /// Another session holds the object (SQLSTATE 55006), e.g. the
    /// replication origin held by a running service.
    InUse,
    /// The replication slot is active in another session (the walsender of
    /// a previous or a second instance).
    SlotBusy,
    /// The replication slot does not exist.
    SlotMissing,
    /// The replication slot was invalidated (`wal_status = lost`), e.g. by
    /// `max_slot_wal_keep_size`: the changes it held are gone.
    SlotInvalidated,
    /// Another centrovision-sync holds the instance lock for this slot.
    SecondInstance,
    /// Wrong user, password or key.
    Auth,
    /// The role or key lacks a privilege.
    Privilege,
    /// A table, function, database or other object does not exist.
    MissingObject,
    /// The local database is not set up for sync (`init` has not run).
    NotInitialized,
    /// The upstream does not keep the sync contract: its functions are
    /// missing, outdated, or answer in an unexpected shape.
    Contract,
    /// The configuration cannot work (a URL, a key, a TLS file, a table
    /// without a primary key, a request too large for the batch size).
    Config,
    /// A message, row image or answer that cannot be decoded.
    Decode,
    /// The request was refused for a reason no retry changes (a statement
    /// the server cannot run, a feature it lacks, an error raised by a
    /// function, an internal error), or cannot be done as asked.
    Refused,
    /// A value or row the other side rejects (SQLSTATE 22, 23).
    RejectedRow,
    /// The request is too large for the server ever to take it as it is:
    /// HTTP 413, a program limit (SQLSTATE 54). A smaller request can
    /// succeed: the pusher splits its batch ([`crate::push`]).
    TooLarge,
    /// The statement ran past the server's `statement_timeout` (SQLSTATE
    /// 57014, which Supabase answers with HTTP 500): the same request will
    /// time out again, a smaller one can fit. The pusher splits its batch.
    TooSlow,
}

impl ErrorKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [ErrorKind; 21] = [
        ErrorKind::LocalUnreachable,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::Timeout,
        ErrorKind::RateLimited,
        ErrorKind::Busy,
        ErrorKind::InUse,
        ErrorKind::SlotBusy,
        ErrorKind::SlotMissing,
        ErrorKind::SlotInvalidated,
        ErrorKind::SecondInstance,
        ErrorKind::Auth,
        ErrorKind::Privilege,
        ErrorKind::MissingObject,
        ErrorKind::NotInitialized,
        ErrorKind::Contract,
        ErrorKind::Config,
        ErrorKind::Decode,
        ErrorKind::Refused,
        ErrorKind::RejectedRow,
        ErrorKind::TooLarge,
        ErrorKind::TooSlow,
    ];
}

/// Longest wait between retries of a transient failure.
pub const TRANSIENT_CAP: Duration = Duration::from_secs(60);
/// Longest wait between retries of a failure that needs a person.
pub const OPERATOR_CAP: Duration = Duration::from_secs(300);

/// Whether and how to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry soon: exponential backoff with jitter up to this cap, never
    /// sooner than the server's `Retry-After`.
    Backoff(Duration),
    /// Retry slowly, up to this cap, while a person fixes the cause; the
    /// task's failure streak raises an alert.
    Slowly(Duration),
    /// Do not retry the row: park it with its error; the rest flows on.
    Park,
}

impl Retry {
    /// The longest wait before a task that failed this way runs again (a
    /// task stopped by a row-level error restarts slowly too).
    pub fn cap(self) -> Duration {
        match self {
            Retry::Backoff(cap) | Retry::Slowly(cap) => cap,
            Retry::Park => OPERATOR_CAP,
        }
    }
}

/// What an [`ErrorKind`] means for the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub class: Class,
    pub retry: Retry,
    /// The other end did not answer (as opposed to answering "no"): the
    /// link goes offline, logged once, and the tasks that need it wait for
    /// a health check to succeed.
    pub outage: bool,
    /// The hint an error of this kind starts with ([`SyncError::new`])
    /// unless where it arose knows a more specific one.
    pub hint: Option<&'static str>,
}

/// The one error policy: class, retry and operator hint of a kind.
pub const fn policy(kind: ErrorKind) -> Policy {
    use ErrorKind::*;
    const fn transient(outage: bool) -> Policy {
        Policy { class: Class::Transient, retry: Retry::Backoff(TRANSIENT_CAP), outage, hint: None }
    }
    const fn operator(hint: Option<&'static str>) -> Policy {
        Policy { class: Class::Operator, retry: Retry::Slowly(OPERATOR_CAP), outage: false, hint }
    }
    match kind {
        LocalUnreachable | UpstreamUnreachable | Timeout | RateLimited => transient(true),
        Busy | InUse => transient(false),
        TooLarge | TooSlow => Policy {
            hint: Some(
                "upstream cannot take a request this large within its limits; the pusher splits its batches by itself, \
                 elsewhere lower [sync] batch_size",
            ),
            ..transient(false)
        },
        SlotBusy => {
            Policy { hint: Some("the slot is in use by another process; is a second centrovision-sync running?"), ..transient(false) }
        }
        SlotMissing => operator(Some("the replication slot does not exist; run `centrovision-sync init` (or `resync` if it was dropped)")),
        SecondInstance => {
            operator(Some("stop the other instance first (systemctl status centrovision-sync), or give this one its own [sync] slot_name"))
        }
        NotInitialized => operator(Some("run `centrovision-sync init` first")),
        SlotInvalidated | Auth | Privilege | MissingObject | Contract | Config | Decode | Refused => operator(None),
        RejectedRow => Policy { class: Class::Data, retry: Retry::Park, outage: false, hint: None },
    }
}

/// Where a database error arose: the side, and the words that start its
/// message ("local database (pusher)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub side: Side,
    what: Cow<'static, str>,
}

impl At {
    pub const fn local(what: &'static str) -> At {
        At { side: Side::Local, what: Cow::Borrowed(what) }
    }
    pub const fn upstream(what: &'static str) -> At {
        At { side: Side::Upstream, what: Cow::Borrowed(what) }
    }
    /// The same side, doing something more specific: "local database
    /// (applying sql/001_control_tables.sql)".
    pub fn doing(&self, what: impl fmt::Display) -> At {
        At { side: self.side, what: Cow::Owned(format!("{} ({what})", self.what)) }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// The local database, for errors with no more specific context.
pub const LOCAL: At = At::local("local database");
/// The journal database beside it (`[local_postgres] journal_database`).
pub const JOURNAL: At = At::local("journal database");
/// The upstream database (postgres mode).
pub const UPSTREAM: At = At::upstream("upstream database");

/// A classified error with an operator hint.
#[derive(Debug, Clone)]
pub struct SyncError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    /// SQLSTATE or PostgREST code, when the error came with one.
    pub code: Option<String>,
    /// How long the server asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// What the error was built from (see [`std::error::Error::source`]).
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, ". Hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

impl SyncError {
    /// An error of `kind`, with the kind's hint (if it has one).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SyncError {
            kind,
            message: message.into(),
            hint: policy(kind).hint.map(str::to_string),
            code: None,
            retry_after: None,
            source: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What this error's kind means (see [`policy`]).
    pub fn policy(&self) -> Policy {
        policy(self.kind)
    }
    pub fn class(&self) -> Class {
        self.policy().class
    }
    pub fn is_transient(&self) -> bool {
        self.class() == Class::Transient
    }
    /// The other end did not answer (see [`Policy::outage`]).
    pub fn is_outage(&self) -> bool {
        self.policy().outage
    }

    /// For statements on the replication slot itself (advance, drop): an
    /// undefined object is the slot missing, an object in use the slot busy.
    pub fn about_slot(mut self) -> Self {
        self.kind = match self.kind {
            ErrorKind::MissingObject => ErrorKind::SlotMissing,
            ErrorKind::InUse => ErrorKind::SlotBusy,
            k => k,
        };
        self
    }

    /// Classifies an error from a PostgreSQL connection; `at` says which
    /// side and what was being done ("local database (pusher)").
    pub fn from_pg(at: At, e: &tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server error: the connection broke or could not be made.
            let kind = match at.side {
                Side::Local => ErrorKind::LocalUnreachable,
                Side::Upstream => ErrorKind::UpstreamUnreachable,
            };
            return SyncError::new(kind, format!("{at}: {}", describe_chain(e)))
                .with_hint(format!("check that the {at} is running and reachable"))
                .with_source(Cause::of(e));
        };
        let code = db.code().code().to_string();
        let mut message = format!("{at}: {} (SQLSTATE {code})", db.message());
        if let Some(d) = db.detail() {
            message.push_str(&format!("; detail: {d}"));
        }
        let hint = db.hint().map(str::to_string).or_else(|| hint_for_sqlstate(&code, &at));
        SyncError {
            kind: kind_of_sqlstate(at.side, &code),
            message,
            hint,
            code: Some(code),
            retry_after: None,
            source: Some(Arc::new(db.clone())),
        }
    }
}

/// An error and its sources, joined with ": ".
fn describe_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The text of an error chain that arrives by reference and cannot be
/// cloned (a driver's transport error), kept level by level so it can be a
/// [`SyncError`]'s source.
#[derive(Debug)]
pub struct Cause {
    text: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    pub fn of(e: &dyn std::error::Error) -> Cause {
        Cause { text: e.to_string(), source: e.source().map(|s| Box::new(Cause::of(s))) }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// The kind of a PostgreSQL error code (SQLSTATE) met on `side`.
pub fn kind_of_sqlstate(side: Side, code: &str) -> ErrorKind {
    let unreachable = match side {
        Side::Local => ErrorKind::LocalUnreachable,
        Side::Upstream => ErrorKind::UpstreamUnreachable,
    };
    match code {
        "42501" => return ErrorKind::Privilege,
        "42P01" | "42883" | "42704" | "42703" | "3D000" | "3F000" => return ErrorKind::MissingObject,
        "55006" => return ErrorKind::InUse,
        // a statement timeout (a cancel by an operator reads the same)
        "57014" => return ErrorKind::TooSlow,
        _ => {}
    }
    match code.get(..2).unwrap_or("") {
        // connection exceptions
        "08" => unreachable,
        // operator intervention: shutdown, crash recovery, cannot connect
        // now (57014, a cancelled statement, is TooSlow above)
        "57" if code.starts_with("57P") => unreachable,
        // program limits: the request is too large as it is
        "54" => ErrorKind::TooLarge,
        // insufficient resources, operator intervention, system errors,
        // serialization failure and deadlock, lock not available or object
        // not in the needed state
        "53" | "57" | "58" | "40" | "55" => ErrorKind::Busy,
        "28" => ErrorKind::Auth,
        // data exceptions, integrity violations
        "22" | "23" => ErrorKind::RejectedRow,
        // syntax and access rules, missing objects, features, raised
        // exceptions, configuration files, internal errors, and the rest
        _ => ErrorKind::Refused,
    }
}

/// The class of a PostgreSQL error code (the same on either side).
pub fn class_of_sqlstate(code: &str) -> Class {
    policy(kind_of_sqlstate(Side::Upstream, code)).class
}

fn hint_for_sqlstate(code: &str, at: &At) -> Option<String> {
    Some(match code {
        "28P01" | "28000" => format!("check the user and password configured for the {at}"),
        "3D000" => format!("check the database name configured for the {at}"),
        "42501" => "the configured role lacks a privilege; run `centrovision-sync doctor` for the exact GRANTs".into(),
        "42P01" => "a configured table does not exist; create it or remove it from [sync] tables".into(),
        "42883" => "a required function is missing; run `centrovision-sync init` (or `init --upstream`)".into(),
        "55006" => "another process is using the replication slot; is a second centrovision-sync running?".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_fall_in_the_expected_classes() {
        assert_eq!(class_of_sqlstate("08006"), Class::Transient);
        assert_eq!(class_of_sqlstate("57P01"), Class::Transient);
        assert_eq!(class_of_sqlstate("57014"), Class::Transient);
        assert_eq!(class_of_sqlstate("40001"), Class::Transient);
        assert_eq!(class_of_sqlstate("55P03"), Class::Transient);
        assert_eq!(class_of_sqlstate("28P01"), Class::Operator);
        assert_eq!(class_of_sqlstate("42P01"), Class::Operator);
        assert_eq!(class_of_sqlstate("0A000"), Class::Operator);
        assert_eq!(class_of_sqlstate("25P02"), Class::Operator);
        assert_eq!(class_of_sqlstate("22P02"), Class::Data);
        assert_eq!(class_of_sqlstate("23502"), Class::Data);
    }

    #[test]
    fn a_broken_connection_is_unreachable_on_the_side_it_happened() {
        assert_eq!(kind_of_sqlstate(Side::Local, "08006"), ErrorKind::LocalUnreachable);
        assert_eq!(kind_of_sqlstate(Side::Upstream, "08006"), ErrorKind::UpstreamUnreachable);
        assert_eq!(kind_of_sqlstate(Side::Local, "57P01"), ErrorKind::LocalUnreachable);
        assert_eq!(kind_of_sqlstate(Side::Upstream, "57P03"), ErrorKind::UpstreamUnreachable);
    }

    #[test]
    fn a_deadlock_or_a_lack_of_resources_is_busy_not_unreachable() {
        for code in ["40001", "40P01", "53300", "55P03", "58030"] {
            assert_eq!(kind_of_sqlstate(Side::Local, code), ErrorKind::Busy, "{code}");
        }
    }

    #[test]
    fn a_statement_timeout_is_too_slow_and_a_program_limit_too_large_both_retried_smaller() {
        assert_eq!(kind_of_sqlstate(Side::Upstream, "57014"), ErrorKind::TooSlow);
        assert_eq!(kind_of_sqlstate(Side::Upstream, "54000"), ErrorKind::TooLarge);
        assert_eq!(kind_of_sqlstate(Side::Upstream, "54001"), ErrorKind::TooLarge);
        for kind in [ErrorKind::TooLarge, ErrorKind::TooSlow] {
            let p = policy(kind);
            assert_eq!(p.class, Class::Transient, "{kind:?}");
            assert!(!p.outage, "{kind:?}: upstream answered");
            assert!(p.hint.is_some_and(|h| h.contains("batch_size")), "{kind:?}");
        }
    }

    #[test]
    fn sqlstates_that_need_a_person_say_what_is_wrong() {
        assert_eq!(kind_of_sqlstate(Side::Local, "28P01"), ErrorKind::Auth);
        assert_eq!(kind_of_sqlstate(Side::Local, "42501"), ErrorKind::Privilege);
        for code in ["42P01", "42883", "42704", "3D000"] {
            assert_eq!(kind_of_sqlstate(Side::Upstream, code), ErrorKind::MissingObject, "{code}");
        }
        assert_eq!(kind_of_sqlstate(Side::Local, "55006"), ErrorKind::InUse);
        assert_eq!(kind_of_sqlstate(Side::Local, "42601"), ErrorKind::Refused);
        assert_eq!(kind_of_sqlstate(Side::Local, "P0001"), ErrorKind::Refused);
        assert_eq!(kind_of_sqlstate(Side::Upstream, "22P02"), ErrorKind::RejectedRow);
    }

    #[test]
    fn transient_kinds_back_off_up_to_a_minute_and_the_rest_slowly() {
        for kind in ErrorKind::ALL {
            let p = policy(kind);
            match p.class {
                Class::Transient => assert_eq!(p.retry, Retry::Backoff(TRANSIENT_CAP), "{kind:?}"),
                Class::Operator => assert_eq!(p.retry, Retry::Slowly(OPERATOR_CAP), "{kind:?}"),
                Class::Data => assert_eq!(p.retry, Retry::Park, "{kind:?}"),
            }
            assert!(p.retry.cap() <= OPERATOR_CAP);
        }
    }

    #[test]
    fn only_an_unanswered_request_is_an_outage() {
        let outages: Vec<ErrorKind> = ErrorKind::ALL.into_iter().filter(|k| policy(*k).outage).collect();
        assert_eq!(outages, [ErrorKind::LocalUnreachable, ErrorKind::UpstreamUnreachable, ErrorKind::Timeout, ErrorKind::RateLimited]);
        assert!(outages.iter().all(|k| policy(*k).class == Class::Transient));
    }

    #[test]
    fn a_lost_or_missing_slot_needs_an_operator_but_a_busy_slot_is_retried() {
        assert_eq!(policy(ErrorKind::SlotMissing).class, Class::Operator);
        assert_eq!(policy(ErrorKind::SlotInvalidated).class, Class::Operator);
        assert_eq!(policy(ErrorKind::SlotBusy).class, Class::Transient);
        assert!(!policy(ErrorKind::SlotBusy).outage);
    }

    #[test]
    fn only_a_rejected_row_is_parked() {
        let parked: Vec<ErrorKind> = ErrorKind::ALL.into_iter().filter(|k| policy(*k).retry == Retry::Park).collect();
        assert_eq!(parked, [ErrorKind::RejectedRow]);
        assert_eq!(policy(ErrorKind::RejectedRow).class, Class::Data);
    }

    #[test]
    fn a_new_error_starts_with_its_kinds_hint_and_a_specific_hint_wins() {
        let e = SyncError::new(ErrorKind::NotInitialized, "not initialized");
        assert_eq!(e.to_string(), "not initialized. Hint: run `centrovision-sync init` first");
        let e = SyncError::new(ErrorKind::SlotMissing, "gone").with_hint("do this");
        assert_eq!(e.to_string(), "gone. Hint: do this");
        assert_eq!(SyncError::new(ErrorKind::Busy, "busy").to_string(), "busy");
    }

    #[test]
    fn a_slot_statement_turns_missing_and_in_use_into_slot_kinds() {
        let e = SyncError::new(ErrorKind::MissingObject, "x").about_slot();
        assert_eq!(e.kind, ErrorKind::SlotMissing);
        let e = SyncError::new(ErrorKind::InUse, "x").about_slot();
        assert_eq!(e.kind, ErrorKind::SlotBusy);
        let e = SyncError::new(ErrorKind::Auth, "x").about_slot();
        assert_eq!(e.kind, ErrorKind::Auth);
    }

    #[test]
    fn an_error_keeps_its_source_chain() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = SyncError::new(ErrorKind::LocalUnreachable, "local database: cannot connect").with_source(Cause::of(&inner));
        let src = std::error::Error::source(&outer).expect("a source");
        assert_eq!(src.to_string(), "refused");
        assert_eq!(describe_chain(&outer), "local database: cannot connect: refused");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_on_the_side_named_by_the_context() {
        // Nothing listens on port 1: the driver reports an I/O error, not a
        // server error.
        let e = tokio_postgres::connect("host=127.0.0.1 port=1 user=x dbname=x connect_timeout=5", tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on port 1");
        let local = SyncError::from_pg(At::local("local database (pusher)"), &e);
        assert_eq!(local.kind, ErrorKind::LocalUnreachable);
        assert!(local.is_outage());
        assert!(local.message.starts_with("local database (pusher): "), "{local}");
        assert_eq!(local.hint.as_deref(), Some("check that the local database (pusher) is running and reachable"));
        assert!(std::error::Error::source(&local).is_some(), "the driver's error is kept as the source");
        let up = SyncError::from_pg(UPSTREAM, &e);
        assert_eq!(up.kind, ErrorKind::UpstreamUnreachable);
    }

    #[test]
    fn a_context_names_its_side_and_what_was_being_done() {
        let at = LOCAL.doing("applying sql/001_control_tables.sql");
        assert_eq!(at.side, Side::Local);
        assert_eq!(at.to_string(), "local database (applying sql/001_control_tables.sql)");
        assert_eq!(UPSTREAM.side, Side::Upstream);
    }
}

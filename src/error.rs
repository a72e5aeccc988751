//! Errors, classified once where they arise.
//!
//! Every failure the service meets falls in one of three classes, and the
//! class alone decides what happens next:
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

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Operator,
    Data,
}

/// A classified error with an operator hint.
#[derive(Debug, Clone)]
pub struct SyncError {
    pub class: Class,
    pub message: String,
    pub hint: Option<String>,
    /// SQLSTATE or PostgREST code, when the error came with one.
    pub code: Option<String>,
    /// How long the server asked us to wait (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
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

impl std::error::Error for SyncError {}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

impl SyncError {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        SyncError { class, message: message.into(), hint: None, code: None, retry_after: None }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(Class::Transient, message)
    }
    pub fn operator(message: impl Into<String>) -> Self {
        Self::new(Class::Operator, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn is_transient(&self) -> bool {
        self.class == Class::Transient
    }

    /// Classifies an error from a PostgreSQL connection. `context` says what
    /// was being done ("local database", "upstream database").
    pub fn from_pg(context: &str, e: &tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server error: the connection broke or could not be made.
            let msg = format!("{context}: {}", describe_io(e));
            return SyncError::transient(msg)
                .with_hint(format!("check that the {context} is running and reachable"));
        };
        let code = db.code().code().to_string();
        let class = class_of_sqlstate(&code);
        let mut message = format!("{context}: {} (SQLSTATE {code})", db.message());
        if let Some(d) = db.detail() {
            message.push_str(&format!("; detail: {d}"));
        }
        let hint = db.hint().map(str::to_string).or_else(|| hint_for_sqlstate(&code, context));
        SyncError { class, message, hint, code: Some(code), retry_after: None }
    }
}

fn describe_io(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The class of a PostgreSQL error code.
pub fn class_of_sqlstate(code: &str) -> Class {
    match code.get(..2).unwrap_or("") {
        // connection exceptions, insufficient resources, operator
        // intervention (shutdown, crash recovery), system errors
        "08" | "53" | "57" | "58" => match code {
            "57014" => Class::Transient, // statement timeout: retry (smaller)
            _ => Class::Transient,
        },
        // serialization failure, deadlock
        "40" => Class::Transient,
        // lock not available, object in use
        "55" => Class::Transient,
        // auth, privileges, undefined objects, config
        "28" | "42" | "3D" | "3F" | "0A" | "P0" | "F0" | "XX" => Class::Operator,
        // data exceptions, integrity violations
        "22" | "23" | "2" => Class::Data,
        _ => Class::Operator,
    }
}

fn hint_for_sqlstate(code: &str, context: &str) -> Option<String> {
    Some(match code {
        "28P01" | "28000" => format!("check the user and password configured for the {context}"),
        "3D000" => format!("check the database name configured for the {context}"),
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
        assert_eq!(class_of_sqlstate("40001"), Class::Transient);
        assert_eq!(class_of_sqlstate("28P01"), Class::Operator);
        assert_eq!(class_of_sqlstate("42P01"), Class::Operator);
        assert_eq!(class_of_sqlstate("22P02"), Class::Data);
        assert_eq!(class_of_sqlstate("23502"), Class::Data);
    }
}

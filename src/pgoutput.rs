//! Decoding of PostgreSQL's `pgoutput` logical replication messages.
//!
//! The replication stream is the one input to this service that we do not
//! control byte by byte, so its parsing is kept apart from everything else:
//! this module is pure. Bytes go in, typed messages (borrowing from those
//! bytes) come out, and malformed input is a [`DecodeError`], never a panic
//! or an allocation sized by an untrusted count. There is no state, no I/O
//! and no logging here; the connection, the slot and the acknowledgements
//! live in `replication`, which feeds each XLogData payload to [`decode`].
//!
//! Scope: protocol version 1 with text-format values (the `proto_version
//! '1'` plugin option), plus the binary value kind for completeness.
//! Streaming and two-phase messages (`S`, `E`, `c`, `A`, `b`, `P`, `K`,
//! `r`, `p`) are only sent for later protocol versions and are reported as
//! [`DecodeError::UnknownMessageType`]. The formats follow the PostgreSQL
//! documentation, "Logical Replication Message Formats" and "Streaming
//! Replication Protocol".
//!
//! `encode` and `encode_frame` write the same formats back out. They exist
//! for tests and benchmarks, so that `decode(encode(m)) == m` can be checked
//! and realistic input built without a server; so they are compiled only for
//! this crate's unit tests and with the `test-utils` feature (which the
//! integration tests, benches and fuzz targets enable), never into the
//! service.

use std::fmt;

use crate::lsn::Lsn;

/// One decoded `pgoutput` message, borrowing text and values from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate),
    /// A `pg_logical_emit_message` message (`M`).
    LogicalMessage(LogicalMessage<'a>),
}

impl Message<'_> {
    /// Which kind of message this is, e.g. for logs and metrics.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Begin(_) => MessageKind::Begin,
            Message::Commit(_) => MessageKind::Commit,
            Message::Origin(_) => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type(_) => MessageKind::Type,
            Message::Insert(_) => MessageKind::Insert,
            Message::Update(_) => MessageKind::Update,
            Message::Delete(_) => MessageKind::Delete,
            Message::Truncate(_) => MessageKind::Truncate,
            Message::LogicalMessage(_) => MessageKind::LogicalMessage,
        }
    }
}

/// Start of a transaction (`B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Microseconds since the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
    pub xid: u32,
}

/// End of a transaction (`C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0; passed through unchecked.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: what to confirm as flushed once
    /// the transaction is durably applied.
    pub end_lsn: Lsn,
    /// Microseconds since the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
}

/// The replication origin a transaction came from (`O`). Several may appear
/// inside one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's shape (`R`). Sent before the first change to a relation in a
/// session and again whenever its definition changes, so the latest one for
/// an OID is the one that describes the tuples that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// The table's `REPLICA IDENTITY` setting, which decides what an Update or
/// Delete carries about the old row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
    /// Any other byte. [`decode`] never puts `d`, `n`, `f` or `i` here.
    Unknown(u8),
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Self {
        match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => ReplicaIdentity::Unknown(other),
        }
    }

    #[cfg(any(test, feature = "test-utils"))]
    fn to_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
            ReplicaIdentity::Unknown(b) => b,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

/// A data type's name (`Y`), sent before a Relation that uses a type outside
/// `pg_catalog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMsg {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// A new row (`I`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    pub relation_oid: u32,
    pub new: Tuple<'a>,
}

/// A changed row (`U`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    pub relation_oid: u32,
    /// Present only when the key changed (`K`) or the table has
    /// `REPLICA IDENTITY FULL` (`O`).
    pub old: Option<OldTuple<'a>>,
    pub new: Tuple<'a>,
}

/// A removed row (`D`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub relation_oid: u32,
    pub old: OldTuple<'a>,
}

/// What an Update or Delete says about the old row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: the replica identity columns; every other column is `Null`.
    Key(Tuple<'a>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `TRUNCATE` of one or more tables (`T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_oids: Vec<u32>,
}

/// A message written with `pg_logical_emit_message` (`M`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

/// One row's column values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    pub columns: Vec<Value<'a>>,
}

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `n`: SQL NULL (also every non-key column of an [`OldTuple::Key`]).
    Null,
    /// `u`: a TOASTed value that did not change; the real value is not sent.
    UnchangedToast,
    /// `t`: the value's text output, in the server encoding, not validated.
    Text(&'a [u8]),
    /// `b`: the value's binary send format (only with the `binary` option).
    Binary(&'a [u8]),
}

/// One CopyData frame of the streaming replication protocol, as sent by the
/// walsender during `START_REPLICATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `w`: WAL data; for logical replication `data` is one `pgoutput`
    /// message, for [`decode`].
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        /// Microseconds since the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
        server_time_micros: i64,
        data: &'a [u8],
    },
    /// `k`: primary keepalive.
    Keepalive {
        wal_end: Lsn,
        /// Microseconds since the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
        server_time_micros: i64,
        /// The server wants a standby status update now, or it may time us out.
        reply_requested: bool,
    },
}

/// Which message or frame a [`DecodeError`] happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    LogicalMessage,
    XLogData,
    Keepalive,
}

impl MessageKind {
    /// What the outer thing is called in error messages.
    fn noun(self) -> &'static str {
        match self {
            MessageKind::XLogData | MessageKind::Keepalive => "replication frame",
            _ => "pgoutput message",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Begin => "a Begin message",
            MessageKind::Commit => "a Commit message",
            MessageKind::Origin => "an Origin message",
            MessageKind::Relation => "a Relation message",
            MessageKind::Type => "a Type message",
            MessageKind::Insert => "an Insert message",
            MessageKind::Update => "an Update message",
            MessageKind::Delete => "a Delete message",
            MessageKind::Truncate => "a Truncate message",
            MessageKind::LogicalMessage => "a logical decoding message",
            MessageKind::XLogData => "an XLogData frame",
            MessageKind::Keepalive => "a primary keepalive frame",
        })
    }
}

/// Why a message or frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("Empty pgoutput message: expected at least the one-byte message type")]
    Empty,

    #[error("Empty replication frame: expected at least the one-byte frame type")]
    EmptyFrame,

    #[error(
        "Unknown pgoutput message type {}: only protocol version 1 messages (B, C, O, R, Y, I, U, D, T, M) are understood",
        show_byte(.0)
    )]
    UnknownMessageType(u8),

    #[error(
        "Unknown replication frame type {}: expected XLogData (w) or primary keepalive (k)",
        show_byte(.0)
    )]
    UnknownFrameType(u8),

    #[error(
        "Truncated {}: needed {needed} more {} for the {field} of {within}",
        .within.noun(),
        bytes_word(.needed)
    )]
    Truncated {
        within: MessageKind,
        field: &'static str,
        /// How many bytes were missing, not the field's size.
        needed: usize,
    },

    #[error(
        "Unknown tuple value kind {} in {within}: expected n, u, t or b",
        show_byte(.found)
    )]
    UnknownTupleKind { within: MessageKind, found: u8 },

    #[error(
        "Unexpected tuple marker {} in {within}: expected {expected}",
        show_byte(.found)
    )]
    UnexpectedTupleMarker { within: MessageKind, found: u8, expected: &'static str },

    #[error("The {field} of {within} is not valid UTF-8")]
    InvalidUtf8 { within: MessageKind, field: &'static str },

    #[error("The {field} of {within} has no terminating NUL byte")]
    MissingNul { within: MessageKind, field: &'static str },

    #[error("The {field} of {within} is negative ({value})")]
    NegativeLength { within: MessageKind, field: &'static str, value: i32 },

    #[error(
        "Trailing bytes after the last field of {within}: {extra} {} left over",
        bytes_word(.extra)
    )]
    TrailingBytes { within: MessageKind, extra: usize },
}

fn show_byte(b: &u8) -> String {
    if b.is_ascii_graphic() { format!("0x{b:02X} ('{}')", char::from(*b)) } else { format!("0x{b:02X}") }
}

fn bytes_word(n: &usize) -> &'static str {
    if *n == 1 { "byte" } else { "bytes" }
}

/// Decodes one `pgoutput` message: the `data` of one XLogData frame.
///
/// The whole buffer must be exactly one message; bytes left over after its
/// last field are an error.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, body) = buf.split_first().ok_or(DecodeError::Empty)?;
    let kind = match tag {
        b'B' => MessageKind::Begin,
        b'C' => MessageKind::Commit,
        b'O' => MessageKind::Origin,
        b'R' => MessageKind::Relation,
        b'Y' => MessageKind::Type,
        b'I' => MessageKind::Insert,
        b'U' => MessageKind::Update,
        b'D' => MessageKind::Delete,
        b'T' => MessageKind::Truncate,
        b'M' => MessageKind::LogicalMessage,
        other => return Err(DecodeError::UnknownMessageType(other)),
    };
    let mut r = Reader { buf: body, within: kind };
    let msg = match kind {
        MessageKind::Begin => Message::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
            xid: r.u32("transaction ID")?,
        }),
        MessageKind::Commit => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
        }),
        MessageKind::Origin => Message::Origin(Origin { commit_lsn: r.lsn("origin commit LSN")?, name: r.string("origin name")? }),
        MessageKind::Relation => Message::Relation(r.relation()?),
        MessageKind::Type => {
            Message::Type(TypeMsg { oid: r.u32("type OID")?, namespace: r.string("type namespace")?, name: r.string("type name")? })
        }
        MessageKind::Insert => {
            let relation_oid = r.u32("relation OID")?;
            match r.u8("new tuple marker")? {
                b'N' => {}
                found => return Err(r.unexpected_marker(found, "N (new tuple)")),
            }
            Message::Insert(Insert { relation_oid, new: r.tuple()? })
        }
        MessageKind::Update => {
            let relation_oid = r.u32("relation OID")?;
            let (old, marker) = match r.u8("tuple marker")? {
                b'K' => (Some(OldTuple::Key(r.tuple()?)), r.u8("new tuple marker")?),
                b'O' => (Some(OldTuple::Full(r.tuple()?)), r.u8("new tuple marker")?),
                other => (None, other),
            };
            if marker != b'N' {
                let expected = if old.is_some() { "N (new tuple)" } else { "K (old key), O (old tuple) or N (new tuple)" };
                return Err(r.unexpected_marker(marker, expected));
            }
            Message::Update(Update { relation_oid, old, new: r.tuple()? })
        }
        MessageKind::Delete => {
            let relation_oid = r.u32("relation OID")?;
            let old = match r.u8("old tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => return Err(r.unexpected_marker(found, "K (old key) or O (old tuple)")),
            };
            Message::Delete(Delete { relation_oid, old })
        }
        MessageKind::Truncate => Message::Truncate(r.truncate()?),
        MessageKind::LogicalMessage => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.str("prefix")?;
            let content = r.len_prefixed("content length", "content")?;
            Message::LogicalMessage(LogicalMessage { transactional: flags & LOGICAL_MESSAGE_TRANSACTIONAL != 0, lsn, prefix, content })
        }
        MessageKind::XLogData | MessageKind::Keepalive => {
            return Err(DecodeError::UnknownMessageType(tag));
        }
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes one CopyData payload of the streaming replication protocol:
/// XLogData (`w`) or primary keepalive (`k`). The `data` of an XLogData
/// frame is the rest of the buffer and is not looked at.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let (&tag, body) = buf.split_first().ok_or(DecodeError::EmptyFrame)?;
    match tag {
        b'w' => {
            let mut r = Reader { buf: body, within: MessageKind::XLogData };
            Ok(Frame::XLogData {
                wal_start: r.lsn("WAL start")?,
                wal_end: r.lsn("WAL end")?,
                server_time_micros: r.i64("server clock")?,
                data: r.buf,
            })
        }
        b'k' => {
            let mut r = Reader { buf: body, within: MessageKind::Keepalive };
            let frame = Frame::Keepalive {
                wal_end: r.lsn("WAL end")?,
                server_time_micros: r.i64("server clock")?,
                reply_requested: r.u8("reply-requested flag")? != 0,
            };
            r.finish()?;
            Ok(frame)
        }
        other => Err(DecodeError::UnknownFrameType(other)),
    }
}

const COLUMN_IS_KEY: u8 = 1;
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
const LOGICAL_MESSAGE_TRANSACTIONAL: u8 = 1;

/// The smallest encoding of one Relation column: flags, an empty name's NUL,
/// type OID and type modifier. Bounds preallocation by what the input holds.
const MIN_RELATION_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// A cursor over the unread part of one message. Every read is checked and
/// failures name the field and the message they happened in.
struct Reader<'a> {
    buf: &'a [u8],
    within: MessageKind,
}

impl<'a> Reader<'a> {
    fn truncated(&self, field: &'static str, size: usize) -> DecodeError {
        DecodeError::Truncated { within: self.within, field, needed: size.saturating_sub(self.buf.len()) }
    }

    fn unexpected_marker(&self, found: u8, expected: &'static str) -> DecodeError {
        DecodeError::UnexpectedTupleMarker { within: self.within, found, expected }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or_else(|| self.truncated(field, n))?;
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or_else(|| self.truncated(field, N))?;
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.array(field).map(|b| Lsn::from_u64(u64::from_be_bytes(b)))
    }

    /// A non-negative count or length; negative is an error, not a wrap.
    fn non_negative(&self, value: i32, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength { within: self.within, field, value })
    }

    /// An Int16 count, as used for columns.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(field)?;
        self.non_negative(i32::from(n), field)
    }

    /// An Int32 count or length.
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(field)?;
        self.non_negative(n, field)
    }

    /// An Int32 length followed by that many bytes.
    fn len_prefixed(&mut self, len_field: &'static str, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.count32(len_field)?;
        self.take(n, field)
    }

    /// A NUL-terminated UTF-8 string.
    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let within = self.within;
        let mut parts = self.buf.splitn(2, |&b| b == 0);
        let text = parts.next().unwrap_or_default();
        self.buf = parts.next().ok_or(DecodeError::MissingNul { within, field })?;
        std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 { within, field })
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation OID")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = ReplicaIdentity::from_byte(self.u8("replica identity")?);
        let n = self.count16("column count")?;
        let mut columns = Vec::with_capacity(n.min(self.buf.len() / MIN_RELATION_COLUMN_LEN));
        for _ in 0..n {
            columns.push(RelationColumn {
                is_key: self.u8("column flags")? & COLUMN_IS_KEY != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation { oid, namespace, name, replica_identity, columns })
    }

    fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let n = self.count32("relation count")?;
        let options = self.u8("options")?;
        let mut relation_oids = Vec::with_capacity(n.min(self.buf.len() / 4));
        for _ in 0..n {
            relation_oids.push(self.u32("relation OID")?);
        }
        Ok(Truncate { cascade: options & TRUNCATE_CASCADE != 0, restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0, relation_oids })
    }

    /// TupleData: an Int16 column count, then one value per column.
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.count16("column count")?;
        // Every value takes at least its one kind byte.
        let mut columns = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            columns.push(self.value()?);
        }
        Ok(Tuple { columns })
    }

    fn value(&mut self) -> Result<Value<'a>, DecodeError> {
        match self.u8("column value kind")? {
            b'n' => Ok(Value::Null),
            b'u' => Ok(Value::UnchangedToast),
            b't' => self.len_prefixed("column value length", "column value").map(Value::Text),
            b'b' => self.len_prefixed("column value length", "column value").map(Value::Binary),
            found => Err(DecodeError::UnknownTupleKind { within: self.within, found }),
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes { within: self.within, extra: self.buf.len() }) }
    }
}

/// Appends `msg` in the `pgoutput` protocol version 1 format, so that
/// [`decode`] gives back an equal message. For tests and benchmarks.
///
/// # Panics
///
/// If `msg` cannot be represented: a string with a NUL byte in it, more than
/// `i16::MAX` columns, more than `i32::MAX` relations in a Truncate, or a
/// value or content longer than `i32::MAX` bytes. PostgreSQL never produces
/// such messages.
#[cfg(any(test, feature = "test-utils"))]
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    match msg {
        Message::Begin(m) => {
            out.push(b'B');
            put_lsn(out, m.final_lsn);
            out.extend_from_slice(&m.commit_time_micros.to_be_bytes());
            out.extend_from_slice(&m.xid.to_be_bytes());
        }
        Message::Commit(m) => {
            out.push(b'C');
            out.push(m.flags);
            put_lsn(out, m.commit_lsn);
            put_lsn(out, m.end_lsn);
            out.extend_from_slice(&m.commit_time_micros.to_be_bytes());
        }
        Message::Origin(m) => {
            out.push(b'O');
            put_lsn(out, m.commit_lsn);
            put_str(out, &m.name);
        }
        Message::Relation(m) => {
            out.push(b'R');
            out.extend_from_slice(&m.oid.to_be_bytes());
            put_str(out, &m.namespace);
            put_str(out, &m.name);
            out.push(m.replica_identity.to_byte());
            put_count16(out, m.columns.len());
            for c in &m.columns {
                out.push(if c.is_key { COLUMN_IS_KEY } else { 0 });
                put_str(out, &c.name);
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        Message::Type(m) => {
            out.push(b'Y');
            out.extend_from_slice(&m.oid.to_be_bytes());
            put_str(out, &m.namespace);
            put_str(out, &m.name);
        }
        Message::Insert(m) => {
            out.push(b'I');
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            out.push(b'N');
            put_tuple(out, &m.new);
        }
        Message::Update(m) => {
            out.push(b'U');
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            if let Some(old) = &m.old {
                put_old_tuple(out, old);
            }
            out.push(b'N');
            put_tuple(out, &m.new);
        }
        Message::Delete(m) => {
            out.push(b'D');
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            put_old_tuple(out, &m.old);
        }
        Message::Truncate(m) => {
            out.push(b'T');
            put_len32(out, m.relation_oids.len());
            let mut options = 0;
            if m.cascade {
                options |= TRUNCATE_CASCADE;
            }
            if m.restart_identity {
                options |= TRUNCATE_RESTART_IDENTITY;
            }
            out.push(options);
            for oid in &m.relation_oids {
                out.extend_from_slice(&oid.to_be_bytes());
            }
        }
        Message::LogicalMessage(m) => {
            out.push(b'M');
            out.push(if m.transactional { LOGICAL_MESSAGE_TRANSACTIONAL } else { 0 });
            put_lsn(out, m.lsn);
            put_str(out, m.prefix);
            put_len32(out, m.content.len());
            out.extend_from_slice(m.content);
        }
    }
}

/// Appends `frame` as a CopyData payload, so that [`decode_frame`] gives
/// back an equal frame. For tests and benchmarks.
#[cfg(any(test, feature = "test-utils"))]
pub fn encode_frame(frame: &Frame<'_>, out: &mut Vec<u8>) {
    match frame {
        Frame::XLogData { wal_start, wal_end, server_time_micros, data } => {
            out.push(b'w');
            put_lsn(out, *wal_start);
            put_lsn(out, *wal_end);
            out.extend_from_slice(&server_time_micros.to_be_bytes());
            out.extend_from_slice(data);
        }
        Frame::Keepalive { wal_end, server_time_micros, reply_requested } => {
            out.push(b'k');
            put_lsn(out, *wal_end);
            out.extend_from_slice(&server_time_micros.to_be_bytes());
            out.push(u8::from(*reply_requested));
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
fn put_lsn(out: &mut Vec<u8>, lsn: Lsn) {
    out.extend_from_slice(&lsn.as_u64().to_be_bytes());
}

#[cfg(any(test, feature = "test-utils"))]
fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(!s.contains('\0'), "pgoutput strings are NUL-terminated and cannot contain NUL: {s:?}");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(any(test, feature = "test-utils"))]
fn put_count16(out: &mut Vec<u8>, n: usize) {
    let n = i16::try_from(n).expect("pgoutput column counts are Int16");
    out.extend_from_slice(&n.to_be_bytes());
}

#[cfg(any(test, feature = "test-utils"))]
fn put_len32(out: &mut Vec<u8>, n: usize) {
    let n = i32::try_from(n).expect("pgoutput lengths and counts are Int32");
    out.extend_from_slice(&n.to_be_bytes());
}

#[cfg(any(test, feature = "test-utils"))]
fn put_old_tuple(out: &mut Vec<u8>, old: &OldTuple<'_>) {
    match old {
        OldTuple::Key(t) => {
            out.push(b'K');
            put_tuple(out, t);
        }
        OldTuple::Full(t) => {
            out.push(b'O');
            put_tuple(out, t);
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
fn put_tuple(out: &mut Vec<u8>, t: &Tuple<'_>) {
    put_count16(out, t.columns.len());
    for v in &t.columns {
        match v {
            Value::Null => out.push(b'n'),
            Value::UnchangedToast => out.push(b'u'),
            Value::Text(b) => {
                out.push(b't');
                put_len32(out, b.len());
                out.extend_from_slice(b);
            }
            Value::Binary(b) => {
                out.push(b'b');
                put_len32(out, b.len());
                out.extend_from_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a message byte by byte, as the documentation lays it out, so
    /// the tests do not depend on [`encode`].
    #[derive(Default)]
    struct Wire(Vec<u8>);

    impl Wire {
        fn byte(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn int16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn int32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn uint32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn int64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn uint64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn string(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn text(self, v: &str) -> Self {
            let len = i32::try_from(v.len()).unwrap();
            self.byte(b't').int32(len).raw(v.as_bytes())
        }
    }

    fn encoded(msg: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out);
        out
    }

    /// Decodes hand-built bytes and checks that encoding gives them back.
    fn decode_exact(bytes: &[u8]) -> Message<'_> {
        let msg = decode(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(encoded(&msg), bytes, "re-encoding {msg:?}");
        msg
    }

    fn lsn(hi: u32, lo: u32) -> Lsn {
        Lsn::from_u64((u64::from(hi) << 32) | u64::from(lo))
    }

    #[test]
    fn begin_decodes_field_by_field() {
        let bytes = [
            b'B', //
            0x00, 0x00, 0x00, 0x01, 0x01, 0x6B, 0x37, 0x48, // final LSN 1/16B3748
            0x00, 0x02, 0xD0, 0x3A, 0x6C, 0x5D, 0x31, 0x80, // commit time
            0x00, 0x00, 0x02, 0xE6, // xid 742
        ];
        let Message::Begin(b) = decode_exact(&bytes) else { panic!("not a Begin") };
        assert_eq!(b.final_lsn, lsn(1, 0x016B_3748));
        assert_eq!(b.final_lsn.to_string(), "1/16B3748");
        assert_eq!(b.commit_time_micros, 0x0002_D03A_6C5D_3180);
        assert_eq!(b.xid, 742);
    }

    #[test]
    fn commit_decodes_field_by_field() {
        let bytes = Wire::default().byte(b'C').byte(0).uint64(0x16B_3748).uint64(0x16B_3778).int64(-5).0;
        let Message::Commit(c) = decode_exact(&bytes) else { panic!("not a Commit") };
        assert_eq!(c.flags, 0);
        assert_eq!(c.commit_lsn, lsn(0, 0x16B_3748));
        assert_eq!(c.end_lsn, lsn(0, 0x16B_3778));
        assert_eq!(c.commit_time_micros, -5);
    }

    #[test]
    fn origin_decodes_field_by_field() {
        let bytes = Wire::default().byte(b'O').uint64(0xAB_0000_0001).string("pg_17").0;
        let Message::Origin(o) = decode_exact(&bytes) else { panic!("not an Origin") };
        assert_eq!(o.commit_lsn, lsn(0xAB, 1));
        assert_eq!(o.name, "pg_17");
    }

    #[test]
    fn relation_decodes_columns_keys_and_type_modifiers() {
        let bytes = Wire::default()
            .byte(b'R')
            .uint32(16_385)
            .string("public")
            .string("patients")
            .byte(b'd')
            .int16(3)
            .byte(1)
            .string("id")
            .uint32(2950) // uuid
            .int32(-1)
            .byte(0)
            .string("name")
            .uint32(1043) // varchar(60)
            .int32(64)
            .byte(0)
            .string("née")
            .uint32(25)
            .int32(-1)
            .0;
        let Message::Relation(r) = decode_exact(&bytes) else { panic!("not a Relation") };
        assert_eq!(r.oid, 16_385);
        assert_eq!(r.namespace, "public");
        assert_eq!(r.name, "patients");
        assert_eq!(r.replica_identity, ReplicaIdentity::Default);
        assert_eq!(
            r.columns,
            [
                RelationColumn { is_key: true, name: "id".into(), type_oid: 2950, type_modifier: -1 },
                RelationColumn { is_key: false, name: "name".into(), type_oid: 1043, type_modifier: 64 },
                RelationColumn { is_key: false, name: "née".into(), type_oid: 25, type_modifier: -1 },
            ]
        );
    }

    #[test]
    fn relation_after_add_column_carries_the_new_column() {
        // The same table before and after `ALTER TABLE visits ADD COLUMN notes text`.
        let visits_with_columns = |count: i16| {
            Wire::default()
                .byte(b'R')
                .uint32(16_385)
                .string("public")
                .string("visits")
                .byte(b'f')
                .int16(count)
                .byte(1)
                .string("id")
                .uint32(20)
                .int32(-1)
        };
        let before = visits_with_columns(1);
        let after = visits_with_columns(2).byte(0).string("notes").uint32(25).int32(-1);
        let Message::Relation(old) = decode_exact(&before.0) else { panic!() };
        let Message::Relation(new) = decode_exact(&after.0) else { panic!() };
        assert_eq!(old.replica_identity, ReplicaIdentity::Full);
        assert_eq!(old.columns.len(), 1);
        assert_eq!(new.columns.len(), 2);
        assert_eq!(new.columns[..1], old.columns[..]);
        assert_eq!(new.columns[1], RelationColumn { is_key: false, name: "notes".into(), type_oid: 25, type_modifier: -1 });
    }

    #[test]
    fn relation_with_unknown_replica_identity_keeps_the_byte() {
        let bytes = Wire::default().byte(b'R').uint32(1).string("").string("t").byte(b'x').int16(0).0;
        let Message::Relation(r) = decode_exact(&bytes) else { panic!() };
        assert_eq!(r.namespace, "", "pg_catalog is sent as an empty namespace");
        assert_eq!(r.replica_identity, ReplicaIdentity::Unknown(b'x'));
        assert!(r.columns.is_empty());
        for (byte, identity) in [
            (b'n', ReplicaIdentity::Nothing),
            (b'i', ReplicaIdentity::Index),
            (b'd', ReplicaIdentity::Default),
            (b'f', ReplicaIdentity::Full),
        ] {
            let bytes = Wire::default().byte(b'R').uint32(1).string("").string("t").byte(byte).int16(0).0;
            let Message::Relation(r) = decode_exact(&bytes) else { panic!() };
            assert_eq!(r.replica_identity, identity);
        }
    }

    #[test]
    fn type_message_decodes_field_by_field() {
        let bytes = Wire::default().byte(b'Y').uint32(16_400).string("clinic").string("visit_status").0;
        let Message::Type(t) = decode_exact(&bytes) else { panic!("not a Type") };
        assert_eq!(t, TypeMsg { oid: 16_400, namespace: "clinic".into(), name: "visit_status".into() });
    }

    #[test]
    fn insert_with_null_text_and_unchanged_toast_values_decodes() {
        let bytes = Wire::default().byte(b'I').uint32(16_385).byte(b'N').int16(4).text("42").byte(b'n').byte(b'u').text("").0;
        let Message::Insert(i) = decode_exact(&bytes) else { panic!("not an Insert") };
        assert_eq!(i.relation_oid, 16_385);
        assert_eq!(i.new.columns, [Value::Text(b"42"), Value::Null, Value::UnchangedToast, Value::Text(b"")]);
    }

    #[test]
    fn binary_values_decode_without_interpretation() {
        let bytes = Wire::default().byte(b'I').uint32(7).byte(b'N').int16(1).byte(b'b').int32(4).raw(&[0, 0, 0, 42]).0;
        let Message::Insert(i) = decode_exact(&bytes) else { panic!() };
        assert_eq!(i.new.columns, [Value::Binary(&[0, 0, 0, 42])]);
    }

    #[test]
    fn text_values_are_not_required_to_be_utf8() {
        let bytes = Wire::default().byte(b'I').uint32(7).byte(b'N').int16(1).byte(b't').int32(1).byte(0xE9).0;
        let Message::Insert(i) = decode_exact(&bytes) else { panic!() };
        assert_eq!(i.new.columns, [Value::Text(&[0xE9])]);
    }

    #[test]
    fn update_without_old_tuple_decodes() {
        let bytes = Wire::default().byte(b'U').uint32(9).byte(b'N').int16(2).text("1").text("b").0;
        let Message::Update(u) = decode_exact(&bytes) else { panic!("not an Update") };
        assert_eq!(u.relation_oid, 9);
        assert_eq!(u.old, None);
        assert_eq!(u.new.columns, [Value::Text(b"1"), Value::Text(b"b")]);
    }

    #[test]
    fn update_of_the_key_carries_the_old_key() {
        let bytes =
            Wire::default().byte(b'U').uint32(9).byte(b'K').int16(2).text("1").byte(b'n').byte(b'N').int16(2).text("2").byte(b'u').0;
        let Message::Update(u) = decode_exact(&bytes) else { panic!() };
        let old = u.old.expect("old key");
        assert!(matches!(old, OldTuple::Key(_)));
        assert_eq!(old.tuple().columns, [Value::Text(b"1"), Value::Null]);
        assert_eq!(u.new.columns, [Value::Text(b"2"), Value::UnchangedToast]);
    }

    #[test]
    fn update_with_replica_identity_full_carries_the_old_row() {
        let bytes = Wire::default().byte(b'U').uint32(9).byte(b'O').int16(1).text("old").byte(b'N').int16(1).text("new").0;
        let Message::Update(u) = decode_exact(&bytes) else { panic!() };
        assert_eq!(u.old, Some(OldTuple::Full(Tuple { columns: vec![Value::Text(b"old")] })));
        assert_eq!(u.new, Tuple { columns: vec![Value::Text(b"new")] });
    }

    #[test]
    fn delete_decodes_with_key_or_full_old_row() {
        let key = Wire::default().byte(b'D').uint32(11).byte(b'K').int16(2).text("5").byte(b'n').0;
        let Message::Delete(d) = decode_exact(&key) else { panic!("not a Delete") };
        assert_eq!(d.relation_oid, 11);
        assert_eq!(d.old, OldTuple::Key(Tuple { columns: vec![Value::Text(b"5"), Value::Null] }));

        let full = Wire::default().byte(b'D').uint32(11).byte(b'O').int16(1).text("5").0;
        let Message::Delete(d) = decode_exact(&full) else { panic!() };
        assert_eq!(d.old, OldTuple::Full(Tuple { columns: vec![Value::Text(b"5")] }));
    }

    #[test]
    fn truncate_decodes_options_and_relations() {
        let bytes = Wire::default().byte(b'T').int32(2).byte(1 | 2).uint32(16_385).uint32(16_390).0;
        let Message::Truncate(t) = decode_exact(&bytes) else { panic!("not a Truncate") };
        assert!(t.cascade);
        assert!(t.restart_identity);
        assert_eq!(t.relation_oids, [16_385, 16_390]);

        let bytes = Wire::default().byte(b'T').int32(1).byte(2).uint32(5).0;
        let Message::Truncate(t) = decode_exact(&bytes) else { panic!() };
        assert_eq!((t.cascade, t.restart_identity, t.relation_oids), (false, true, vec![5]));
    }

    #[test]
    fn logical_message_decodes_field_by_field() {
        let bytes = Wire::default().byte(b'M').byte(1).uint64(0x16B_3748).string("centrovision").int32(3).raw(b"hi\0").0;
        let Message::LogicalMessage(m) = decode_exact(&bytes) else { panic!("not a Message") };
        assert!(m.transactional);
        assert_eq!(m.lsn, lsn(0, 0x16B_3748));
        assert_eq!(m.prefix, "centrovision");
        assert_eq!(m.content, b"hi\0");

        let bytes = Wire::default().byte(b'M').byte(0).uint64(1).string("p").int32(0).0;
        let Message::LogicalMessage(m) = decode_exact(&bytes) else { panic!() };
        assert!(!m.transactional);
        assert_eq!(m.content, b"");
    }

    #[test]
    fn message_kind_matches_the_variant() {
        let bytes = Wire::default().byte(b'T').int32(0).byte(0).0;
        assert_eq!(decode(&bytes).unwrap().kind(), MessageKind::Truncate);
    }

    #[test]
    fn truncated_begin_is_an_error_not_a_panic() {
        let err = decode(b"B").unwrap_err();
        assert_eq!(err, DecodeError::Truncated { within: MessageKind::Begin, field: "final LSN", needed: 8 });
        assert_eq!(err.to_string(), "Truncated pgoutput message: needed 8 more bytes for the final LSN of a Begin message");
        let bytes = Wire::default().byte(b'B').uint64(1).int64(2).byte(0).0;
        assert_eq!(
            decode(&bytes).unwrap_err().to_string(),
            "Truncated pgoutput message: needed 3 more bytes for the transaction ID of a Begin message"
        );
    }

    #[test]
    fn every_strict_prefix_of_a_message_is_an_error() {
        let bytes = Wire::default().byte(b'U').uint32(9).byte(b'K').int16(1).text("1").byte(b'N').int16(2).text("two").byte(b'n').0;
        assert!(decode(&bytes).is_ok());
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "prefix of {end} bytes decoded");
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode_frame(&[]), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn streaming_messages_are_unknown_in_protocol_version_1() {
        let err = decode(b"S\0\0\0\x01\x01").unwrap_err();
        assert_eq!(err, DecodeError::UnknownMessageType(b'S'));
        assert!(err.to_string().starts_with("Unknown pgoutput message type 0x53 ('S')"), "{err}");
        assert_eq!(decode(b"w").unwrap_err(), DecodeError::UnknownMessageType(b'w'));
        assert_eq!(
            decode(&[0]).unwrap_err().to_string(),
            "Unknown pgoutput message type 0x00: only protocol version 1 messages \
             (B, C, O, R, Y, I, U, D, T, M) are understood"
        );
    }

    #[test]
    fn trailing_bytes_after_a_complete_commit_are_an_error() {
        let bytes = Wire::default().byte(b'C').byte(0).uint64(1).uint64(2).int64(3).byte(0).0;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::TrailingBytes { within: MessageKind::Commit, extra: 1 });
        assert_eq!(err.to_string(), "Trailing bytes after the last field of a Commit message: 1 byte left over");
    }

    #[test]
    fn negative_value_length_is_an_error() {
        let bytes = Wire::default().byte(b'I').uint32(1).byte(b'N').int16(1).byte(b't').int32(-1).0;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::NegativeLength { within: MessageKind::Insert, field: "column value length", value: -1 });
        assert_eq!(err.to_string(), "The column value length of an Insert message is negative (-1)");
    }

    #[test]
    fn oversized_value_length_is_a_truncation_not_an_allocation() {
        let bytes = Wire::default().byte(b'I').uint32(1).byte(b'N').int16(1).byte(b't').int32(i32::MAX).raw(b"ab").0;
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::Truncated { within: MessageKind::Insert, field: "column value", needed: usize::try_from(i32::MAX).unwrap() - 2 }
        );
    }

    #[test]
    fn oversized_counts_with_little_input_are_truncations() {
        let tuple = Wire::default().byte(b'D').uint32(1).byte(b'K').int16(i16::MAX).byte(b'n').0;
        assert!(matches!(
            decode(&tuple),
            Err(DecodeError::Truncated { within: MessageKind::Delete, field: "column value kind", needed: 1 })
        ));
        let relation = Wire::default().byte(b'R').uint32(1).string("s").string("t").byte(b'd').int16(i16::MAX).0;
        assert!(matches!(decode(&relation), Err(DecodeError::Truncated { within: MessageKind::Relation, field: "column flags", .. })));
        let truncate = Wire::default().byte(b'T').int32(i32::MAX).byte(0).uint32(1).0;
        assert!(matches!(
            decode(&truncate),
            Err(DecodeError::Truncated { within: MessageKind::Truncate, field: "relation OID", needed: 4 })
        ));
    }

    #[test]
    fn negative_counts_are_errors() {
        let tuple = Wire::default().byte(b'I').uint32(1).byte(b'N').int16(-1).0;
        assert!(matches!(decode(&tuple), Err(DecodeError::NegativeLength { field: "column count", value: -1, .. })));
        let truncate = Wire::default().byte(b'T').int32(i32::MIN).byte(0).0;
        assert!(matches!(decode(&truncate), Err(DecodeError::NegativeLength { field: "relation count", value: i32::MIN, .. })));
    }

    #[test]
    fn relation_name_that_is_not_utf8_is_an_error() {
        let bytes = Wire::default().byte(b'R').uint32(1).string("public").raw(b"p\xE9\0").byte(b'd').int16(0).0;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::InvalidUtf8 { within: MessageKind::Relation, field: "relation name" });
        assert_eq!(err.to_string(), "The relation name of a Relation message is not valid UTF-8");
    }

    #[test]
    fn string_without_nul_is_an_error() {
        let bytes = Wire::default().byte(b'O').uint64(1).raw(b"no terminator").0;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::MissingNul { within: MessageKind::Origin, field: "origin name" });
        assert_eq!(err.to_string(), "The origin name of an Origin message has no terminating NUL byte");
    }

    #[test]
    fn unknown_tuple_value_kind_is_an_error() {
        let bytes = Wire::default().byte(b'I').uint32(1).byte(b'N').int16(1).byte(b'x').0;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnknownTupleKind { within: MessageKind::Insert, found: b'x' });
        assert_eq!(err.to_string(), "Unknown tuple value kind 0x78 ('x') in an Insert message: expected n, u, t or b");
    }

    #[test]
    fn wrong_tuple_markers_are_errors() {
        let insert = Wire::default().byte(b'I').uint32(1).byte(b'K').int16(0).0;
        assert!(matches!(decode(&insert), Err(DecodeError::UnexpectedTupleMarker { within: MessageKind::Insert, found: b'K', .. })));
        let update = Wire::default().byte(b'U').uint32(1).byte(b'K').int16(0).byte(b'O').int16(0).0;
        assert!(matches!(
            decode(&update),
            Err(DecodeError::UnexpectedTupleMarker { within: MessageKind::Update, found: b'O', expected: "N (new tuple)" })
        ));
        let update = Wire::default().byte(b'U').uint32(1).byte(b'X').0;
        assert!(matches!(decode(&update), Err(DecodeError::UnexpectedTupleMarker { within: MessageKind::Update, found: b'X', .. })));
        let delete = Wire::default().byte(b'D').uint32(1).byte(b'N').int16(0).0;
        let err = decode(&delete).unwrap_err();
        assert_eq!(err.to_string(), "Unexpected tuple marker 0x4E ('N') in a Delete message: expected K (old key) or O (old tuple)");
    }

    #[test]
    fn xlogdata_frame_decodes_and_its_data_decodes_as_a_message() {
        let message = Wire::default().byte(b'T').int32(0).byte(0).0;
        let bytes = Wire::default().byte(b'w').uint64(0x16B_3748).uint64(0x16B_3800).int64(789).raw(&message).0;
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(
            frame,
            Frame::XLogData { wal_start: lsn(0, 0x16B_3748), wal_end: lsn(0, 0x16B_3800), server_time_micros: 789, data: &message }
        );
        let Frame::XLogData { data, .. } = frame else { panic!() };
        assert_eq!(decode(data).unwrap().kind(), MessageKind::Truncate);
        let mut out = Vec::new();
        encode_frame(&frame, &mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn keepalive_frame_decodes_field_by_field() {
        let bytes = Wire::default().byte(b'k').uint64(0x2_0000_0010).int64(-1).byte(1).0;
        let frame = decode_frame(&bytes).unwrap();
        assert_eq!(frame, Frame::Keepalive { wal_end: lsn(2, 0x10), server_time_micros: -1, reply_requested: true });
        let mut out = Vec::new();
        encode_frame(&frame, &mut out);
        assert_eq!(out, bytes);

        let quiet = Wire::default().byte(b'k').uint64(0).int64(0).byte(0).0;
        assert!(matches!(decode_frame(&quiet), Ok(Frame::Keepalive { reply_requested: false, .. })));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let long = Wire::default().byte(b'k').uint64(0).int64(0).byte(0).byte(0).0;
        assert_eq!(decode_frame(&long), Err(DecodeError::TrailingBytes { within: MessageKind::Keepalive, extra: 1 }));
        let err = decode_frame(b"w\0\0").unwrap_err();
        assert_eq!(err.to_string(), "Truncated replication frame: needed 6 more bytes for the WAL start of an XLogData frame");
        assert_eq!(decode_frame(b"r"), Err(DecodeError::UnknownFrameType(b'r')));
    }

    #[test]
    #[should_panic(expected = "cannot contain NUL")]
    fn encoding_a_string_with_nul_panics_rather_than_writing_a_different_message() {
        let msg = Message::Origin(Origin { commit_lsn: Lsn::ZERO, name: "a\0b".into() });
        encoded(&msg);
    }
}

//! The `pgoutput` decoder reads bytes that arrive over the network, so
//! whatever arrives it must answer `Ok` or `Err` and never panic; and what
//! the encoder writes (the shape PostgreSQL writes) it must read back
//! unchanged, rejecting any cut-short or length-corrupted copy.
//!
//! Case counts are kept small so this runs in seconds in debug builds; set
//! `PROPTEST_CASES` to run longer.

use std::ops::Range;

use centrovision_sync::lsn::Lsn;
use centrovision_sync::pgoutput::{
    Begin, Commit, Delete, Frame, Insert, LogicalMessage, Message, OldTuple, Origin, Relation, RelationColumn, ReplicaIdentity, Truncate,
    Tuple, TypeMsg, Update, Value, decode, decode_frame, encode, encode_frame,
};
use proptest::prelude::*;

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// An owned column value, for messages that borrow their values.
#[derive(Debug, Clone)]
enum OwnedValue {
    Null,
    UnchangedToast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// A generated message. Messages that own everything are kept as they are;
/// the ones that borrow keep their bytes here and are viewed with `message`.
#[derive(Debug, Clone)]
enum Spec {
    Owned(Message<'static>),
    Insert {
        relation_oid: u32,
        new: Vec<OwnedValue>,
    },
    Update {
        relation_oid: u32,
        /// `true` for a full old row (`O`), `false` for the old key (`K`).
        old: Option<(bool, Vec<OwnedValue>)>,
        new: Vec<OwnedValue>,
    },
    Delete {
        relation_oid: u32,
        old: (bool, Vec<OwnedValue>),
    },
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
}

fn tuple_of(values: &[OwnedValue]) -> Tuple<'_> {
    let columns = values
        .iter()
        .map(|v| match v {
            OwnedValue::Null => Value::Null,
            OwnedValue::UnchangedToast => Value::UnchangedToast,
            OwnedValue::Text(b) => Value::Text(b),
            OwnedValue::Binary(b) => Value::Binary(b),
        })
        .collect();
    Tuple { columns }
}

fn old_tuple_of((full, values): &(bool, Vec<OwnedValue>)) -> OldTuple<'_> {
    if *full { OldTuple::Full(tuple_of(values)) } else { OldTuple::Key(tuple_of(values)) }
}

impl Spec {
    fn message(&self) -> Message<'_> {
        match self {
            Spec::Owned(m) => m.clone(),
            Spec::Insert { relation_oid, new } => Message::Insert(Insert { relation_oid: *relation_oid, new: tuple_of(new) }),
            Spec::Update { relation_oid, old, new } => {
                Message::Update(Update { relation_oid: *relation_oid, old: old.as_ref().map(old_tuple_of), new: tuple_of(new) })
            }
            Spec::Delete { relation_oid, old } => Message::Delete(Delete { relation_oid: *relation_oid, old: old_tuple_of(old) }),
            Spec::LogicalMessage { transactional, lsn, prefix, content } => {
                Message::LogicalMessage(LogicalMessage { transactional: *transactional, lsn: *lsn, prefix, content })
            }
        }
    }

    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&self.message(), &mut out);
        out
    }

    /// Where the encoding's count and length fields are, with the value each
    /// holds, worked out from the documented layout.
    fn length_fields(&self) -> Vec<(Range<usize>, usize)> {
        let mut fields = Vec::new();
        match self {
            Spec::Owned(Message::Relation(r)) => {
                let at = 1 + 4 + r.namespace.len() + 1 + r.name.len() + 1 + 1;
                fields.push((at..at + 2, r.columns.len()));
            }
            Spec::Owned(Message::Truncate(t)) => fields.push((1..5, t.relation_oids.len())),
            Spec::Owned(_) => {}
            Spec::Insert { new, .. } => {
                tuple_length_fields(1 + 4 + 1, new, &mut fields);
            }
            Spec::Update { old, new, .. } => {
                let mut at = 1 + 4;
                if let Some((_, old)) = old {
                    at = tuple_length_fields(at + 1, old, &mut fields);
                }
                tuple_length_fields(at + 1, new, &mut fields);
            }
            Spec::Delete { old: (_, old), .. } => {
                tuple_length_fields(1 + 4 + 1, old, &mut fields);
            }
            Spec::LogicalMessage { prefix, content, .. } => {
                let at = 1 + 1 + 8 + prefix.len() + 1;
                fields.push((at..at + 4, content.len()));
            }
        }
        fields
    }
}

/// Records the length fields of TupleData starting at `at`; returns where
/// the tuple ends.
fn tuple_length_fields(mut at: usize, values: &[OwnedValue], fields: &mut Vec<(Range<usize>, usize)>) -> usize {
    fields.push((at..at + 2, values.len()));
    at += 2;
    for v in values {
        at += 1;
        if let OwnedValue::Text(b) | OwnedValue::Binary(b) = v {
            fields.push((at..at + 4, b.len()));
            at += 4 + b.len();
        }
    }
    at
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn::from_u64)
}

/// Names are NUL-terminated on the wire, so any text without NUL.
fn name() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
        any::<u8>().prop_filter("known bytes decode to the named variants", |b| !b"dnfi".contains(b)).prop_map(ReplicaIdentity::Unknown),
    ]
}

fn values(content: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<OwnedValue>> {
    let value = prop_oneof![
        Just(OwnedValue::Null),
        Just(OwnedValue::UnchangedToast),
        content.clone().prop_map(OwnedValue::Text),
        content.prop_map(OwnedValue::Binary),
    ];
    prop::collection::vec(value, 0..8)
}

/// Any message, with value and content bytes drawn from `content`.
fn spec(content: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Spec> {
    let owned = |m: Message<'static>| Spec::Owned(m);
    let begin = (lsn(), any::<i64>(), any::<u32>())
        .prop_map(move |(final_lsn, t, xid)| owned(Message::Begin(Begin { final_lsn, commit_time_micros: t, xid })));
    let commit = (any::<u8>(), lsn(), lsn(), any::<i64>())
        .prop_map(move |(flags, c, e, t)| owned(Message::Commit(Commit { flags, commit_lsn: c, end_lsn: e, commit_time_micros: t })));
    let origin = (lsn(), name()).prop_map(move |(commit_lsn, name)| owned(Message::Origin(Origin { commit_lsn, name })));
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(|(is_key, name, type_oid, type_modifier)| RelationColumn {
        is_key,
        name,
        type_oid,
        type_modifier,
    });
    let relation = (any::<u32>(), name(), name(), replica_identity(), prop::collection::vec(column, 0..8)).prop_map(
        move |(oid, namespace, name, replica_identity, columns)| {
            owned(Message::Relation(Relation { oid, namespace, name, replica_identity, columns }))
        },
    );
    let type_msg =
        (any::<u32>(), name(), name()).prop_map(move |(oid, namespace, name)| owned(Message::Type(TypeMsg { oid, namespace, name })));
    let truncate = (any::<bool>(), any::<bool>(), prop::collection::vec(any::<u32>(), 0..8)).prop_map(
        move |(cascade, restart_identity, relation_oids)| owned(Message::Truncate(Truncate { cascade, restart_identity, relation_oids })),
    );
    let insert = (any::<u32>(), values(content.clone())).prop_map(|(relation_oid, new)| Spec::Insert { relation_oid, new });
    let update = (any::<u32>(), prop::option::of((any::<bool>(), values(content.clone()))), values(content.clone()))
        .prop_map(|(relation_oid, old, new)| Spec::Update { relation_oid, old, new });
    let delete = (any::<u32>(), any::<bool>(), values(content.clone()))
        .prop_map(|(relation_oid, full, old)| Spec::Delete { relation_oid, old: (full, old) });
    let logical = (any::<bool>(), lsn(), name(), content).prop_map(|(transactional, lsn, prefix, content)| Spec::LogicalMessage {
        transactional,
        lsn,
        prefix,
        content,
    });
    prop_oneof![begin, commit, origin, relation, type_msg, truncate, insert, update, delete, logical]
}

fn any_content() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40).boxed()
}

/// Content that cannot be mistaken for tuple structure: no value kind byte
/// (`b`, `n`, `t`, `u` are all >= 0x62) and short enough that every length
/// and count byte is below 0x62 too. A corrupted value length moves the
/// reader into the middle of other fields; arbitrary content could by
/// chance hold a valid column there, which would be a correct decode of
/// different bytes, not a bug. With this content the shifted read always
/// hits something that is not a value kind.
fn unambiguous_content() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(0u8..0x62, 0..40).boxed()
}

fn frame() -> impl Strategy<Value = (Lsn, Lsn, i64, bool, Vec<u8>, bool)> {
    (lsn(), lsn(), any::<i64>(), any::<bool>(), any_content(), any::<bool>())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes);
        let _ = decode_frame(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_known_tag_never_panic(
        tag in prop::sample::select(b"BCORYIUDTMwk".to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
        let _ = decode_frame(&bytes);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn mutated_valid_messages_never_panic(
        spec in spec(any_content()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = spec.encoded();
        for (at, byte, op) in edits {
            match op {
                0 if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                1 => {
                    let i = at.index(bytes.len() + 1);
                    bytes.insert(i, byte);
                }
                _ if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        let _ = decode(&bytes);
    }

    #[test]
    fn valid_messages_round_trip(spec in spec(any_content())) {
        let msg = spec.message();
        let bytes = spec.encoded();
        prop_assert_eq!(decode(&bytes), Ok(msg));
    }

    #[test]
    fn valid_frames_round_trip(
        (wal_start, wal_end, server_time_micros, reply_requested, data, xlog) in frame(),
    ) {
        let frame = if xlog {
            Frame::XLogData { wal_start, wal_end, server_time_micros, data: &data }
        } else {
            Frame::Keepalive { wal_end, server_time_micros, reply_requested }
        };
        let mut bytes = Vec::new();
        encode_frame(&frame, &mut bytes);
        prop_assert_eq!(decode_frame(&bytes), Ok(frame));
        if !xlog {
            for end in 0..bytes.len() {
                prop_assert!(decode_frame(&bytes[..end]).is_err());
            }
        }
    }

    #[test]
    fn every_strict_prefix_of_a_valid_message_is_an_error(spec in spec(any_content())) {
        let bytes = spec.encoded();
        for end in 0..bytes.len() {
            prop_assert!(decode(&bytes[..end]).is_err(), "prefix of {} bytes decoded", end);
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn every_single_byte_corruption_of_a_length_field_is_an_error(
        spec in spec(unambiguous_content()),
    ) {
        let bytes = spec.encoded();
        prop_assert!(decode(&bytes).is_ok());
        for (range, value) in spec.length_fields() {
            // Check the layout arithmetic before trusting it.
            let field = bytes.get(range.clone()).expect("length field inside the message");
            let stored = field.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            prop_assert_eq!(stored, value, "length field at {:?}", range);

            for at in range {
                for replacement in 0..=u8::MAX {
                    if replacement == bytes[at] {
                        continue;
                    }
                    let mut corrupt = bytes.clone();
                    corrupt[at] = replacement;
                    prop_assert!(
                        decode(&corrupt).is_err(),
                        "byte {} set to {:#04X} still decoded: {:?}",
                        at,
                        replacement,
                        decode(&corrupt)
                    );
                }
            }
        }
    }
}

//! Micro-benchmarks of the capture hot path, without a server:
//!
//! - `pgoutput_decode/*`: `centrovision_sync::pgoutput::decode` on realistic
//!   messages built with `pgoutput::encode` (a ~750-byte patients Insert, a
//!   ~450-byte appointments Insert and Update, Begin/Commit), and on a
//!   transaction mix like the e2e workload's. Throughput in bytes.
//! - `journal_image/*`: building the JSON row image that goes into
//!   `_sync_pending.data`, with capture's own encoder
//!   (`replication::encode_image_for_bench`). Throughput in bytes of
//!   tuple values encoded.
//!
//! `cargo bench --bench decode` (add `-- --quick` for a shorter run).

use std::hint::black_box;

use centrovision_sync::lsn::Lsn;
use centrovision_sync::pgoutput::{
    self, Begin, Commit, Insert, Message, OldTuple, Relation, RelationColumn, ReplicaIdentity, Tuple, Update, Value,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const UUID: u32 = 2950;
const TEXT: u32 = 25;
const DATE: u32 = 1082;
const TEXT_ARRAY: u32 = 1009;
const JSONB: u32 = 3802;
const BYTEA: u32 = 17;
const TIMESTAMPTZ: u32 = 1184;

fn col(name: &str, type_oid: u32, is_key: bool) -> RelationColumn {
    RelationColumn { is_key, name: name.into(), type_oid, type_modifier: -1 }
}

fn patients() -> Relation {
    Relation {
        oid: 16_401,
        namespace: "public".into(),
        name: "patients".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", UUID, true),
            col("branch_id", UUID, false),
            col("full_name", TEXT, false),
            col("birth_date", DATE, false),
            col("phone", TEXT, false),
            col("tags", TEXT_ARRAY, false),
            col("metadata", JSONB, false),
            col("notes", TEXT, false),
            col("photo", BYTEA, false),
            col("created_at", TIMESTAMPTZ, false),
            col("updated_at", TIMESTAMPTZ, false),
            col("deleted_at", TIMESTAMPTZ, false),
        ],
    }
}

fn appointments() -> Relation {
    Relation {
        oid: 16_420,
        namespace: "public".into(),
        name: "appointments".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", UUID, true),
            col("branch_id", UUID, false),
            col("patient_id", UUID, false),
            col("service_id", UUID, false),
            col("starts_at", TIMESTAMPTZ, false),
            col("status", 16_390, false),
            col("reason", TEXT, false),
            col("created_at", TIMESTAMPTZ, false),
            col("updated_at", TIMESTAMPTZ, false),
            col("deleted_at", TIMESTAMPTZ, false),
        ],
    }
}

/// Column texts of a patients row, as the walsender sends them (text
/// output; None = NULL), ~750 bytes of JSON once encoded.
fn patient_values(i: u32) -> Vec<Option<String>> {
    let h = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    vec![
        Some(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])),
        Some("5d41402a-bc4b-2a76-b971-9d911017c592".into()),
        Some(format!("Paciente {i} Ñandú Gómez")),
        Some("1987-03-14".into()),
        Some("+52 55 8372 1946".into()),
        Some("{bench,aseguradora-3,riesgo-1}".into()),
        Some(format!(
            r#"{{"source": "recepcion", "allergies": ["penicilina", "polen"], "insurance": {{"plan": "basico", "policy": "{h}", "provider": "GNP"}}, "emergency_contact": {{"name": "Contacto {i}", "phone": "+52 55 1234 5678"}}}}"#
        )),
        Some(format!("Antecedentes: miopía, uso de lentes desde la infancia.\n\"Refiere\" visión borrosa. {}", h.repeat(4))),
        None,
        Some("2026-01-18 16:04:05.123456+00".into()),
        Some("2026-01-18 16:04:05.123456+00".into()),
        None,
    ]
}

fn appointment_values(i: u32, status: &str) -> Vec<Option<String>> {
    let h = format!("{:032x}", (i as u128).wrapping_mul(0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9));
    vec![
        Some(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])),
        Some("5d41402a-bc4b-2a76-b971-9d911017c592".into()),
        Some("7d793037-a076-0186-574b-0282f2f435e7".into()),
        Some("c4ca4238-a0b9-2382-0dcc-509a6f75849b".into()),
        Some("2026-02-03 10:30:00+00".into()),
        Some(status.into()),
        Some(format!("Motivo de consulta: revisión de agudeza visual. {}", h.repeat(3))),
        Some("2026-01-18 16:04:05.123456+00".into()),
        Some("2026-01-18 16:04:05.123456+00".into()),
        None,
    ]
}

fn tuple(values: &[Option<String>]) -> Tuple<'_> {
    Tuple { columns: values.iter().map(|v| v.as_deref().map_or(Value::Null, |s| Value::Text(s.as_bytes()))).collect() }
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    pgoutput::encode(msg, &mut out);
    // The benchmark must measure what it claims to: the input decodes.
    assert_eq!(pgoutput::decode(&out).as_ref(), Ok(msg));
    out
}

fn decode(c: &mut Criterion) {
    let p = patients();
    let a = appointments();
    let pv = patient_values(7);
    let av = appointment_values(7, "scheduled");
    let av2 = appointment_values(7, "confirmed");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("insert_patient", encode(&Message::Insert(Insert { relation_oid: p.oid, new: tuple(&pv) }))),
        ("insert_appointment", encode(&Message::Insert(Insert { relation_oid: a.oid, new: tuple(&av) }))),
        ("update_appointment", encode(&Message::Update(Update { relation_oid: a.oid, old: None, new: tuple(&av2) }))),
        (
            "update_appointment_old_key",
            encode(&Message::Update(Update {
                relation_oid: a.oid,
                old: Some(OldTuple::Key(Tuple {
                    columns: tuple(&av).columns.iter().enumerate().map(|(n, v)| if n == 0 { *v } else { Value::Null }).collect(),
                })),
                new: tuple(&av2),
            })),
        ),
        (
            "begin",
            encode(&Message::Begin(Begin {
                final_lsn: Lsn::from_u64(0x1_6B37_4D48),
                commit_time_micros: 822_000_000_000_000,
                xid: 123_456,
            })),
        ),
        (
            "commit",
            encode(&Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn::from_u64(0x1_6B37_4D48),
                end_lsn: Lsn::from_u64(0x1_6B37_4D78),
                commit_time_micros: 822_000_000_000_000,
            })),
        ),
        ("relation_patients", encode(&Message::Relation(p.clone()))),
    ];
    let mut g = c.benchmark_group("pgoutput_decode");
    for (name, buf) in &cases {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(*name, |b| b.iter(|| pgoutput::decode(black_box(buf)).expect("decodes")));
    }

    // The e2e workload's shape: ~1.8 row changes per transaction, patients
    // and appointments, 1000 messages per iteration.
    let pvs: Vec<Vec<Option<String>>> = (0..64).map(patient_values).collect();
    let avs: Vec<Vec<Option<String>>> = (0..64).map(|i| appointment_values(i, "scheduled")).collect();
    let mut stream: Vec<Vec<u8>> = Vec::new();
    let mut i = 0usize;
    while stream.len() < 1000 {
        let lsn = Lsn::from_u64(0x1_0000_0000 + i as u64 * 4096);
        stream.push(encode(&Message::Begin(Begin { final_lsn: lsn, commit_time_micros: 822_000_000_000_000, xid: i as u32 })));
        if i.is_multiple_of(2) {
            stream.push(encode(&Message::Insert(Insert { relation_oid: p.oid, new: tuple(&pvs[i % 64]) })));
        }
        stream.push(encode(&Message::Update(Update { relation_oid: a.oid, old: None, new: tuple(&avs[i % 64]) })));
        stream.push(encode(&Message::Commit(Commit { flags: 0, commit_lsn: lsn, end_lsn: lsn, commit_time_micros: 822_000_000_000_000 })));
        i += 1;
    }
    let bytes: usize = stream.iter().map(Vec::len).sum();
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("workload_mix_1000_messages", |b| {
        b.iter(|| {
            for m in &stream {
                black_box(pgoutput::decode(black_box(m)).expect("decodes"));
            }
        })
    });
    g.finish();
}

fn journal_image(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal_image");
    for (name, rel, rows) in [
        ("patients_1000_rows", patients(), (0..1000).map(patient_values).collect::<Vec<_>>()),
        ("appointments_1000_rows", appointments(), (0..1000).map(|i| appointment_values(i, "confirmed")).collect::<Vec<_>>()),
    ] {
        let tuples: Vec<Tuple<'_>> = rows.iter().map(|r| tuple(r)).collect();
        let value_bytes: usize = rows.iter().flatten().flatten().map(String::len).sum();
        let json = centrovision_sync::replication::encode_image_for_bench(&rel, &tuples).expect("encodes");
        assert!(json > value_bytes, "the image carries every value");
        g.throughput(Throughput::Bytes(value_bytes as u64));
        g.bench_function(name, |b| {
            b.iter(|| centrovision_sync::replication::encode_image_for_bench(black_box(&rel), black_box(&tuples)).expect("encodes"))
        });
    }
    g.finish();
}

criterion_group!(benches, decode, journal_image);
criterion_main!(benches);

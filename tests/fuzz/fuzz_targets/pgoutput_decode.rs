//! Fuzzes the pgoutput decoder, the one parser of bytes that arrive from the
//! network (the replication stream).
//!
//! Run from the repository root (nightly toolchain, `cargo install cargo-fuzz`):
//!
//! ```text
//! cargo +nightly fuzz run --fuzz-dir tests/fuzz pgoutput_decode
//! ```
//!
//! Properties, for every input:
//! - `decode` and `decode_frame` return `Ok` or `Err`, never panic, and an
//!   error's message can be formatted;
//! - whatever decodes re-encodes (`encode` / `encode_frame`) to bytes that
//!   decode to the same message or frame;
//! - the `data` of an XLogData frame is itself fed to `decode`.
//!
//! Seeds in `corpus/pgoutput_decode/seed-*` are real messages captured from
//! PostgreSQL 15 (`pg_logical_slot_peek_binary_changes`, proto_version 1).

#![no_main]

use centrovision_sync::pgoutput::{Frame, decode, decode_frame, encode, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(msg) => {
            let mut out = Vec::new();
            encode(&msg, &mut out);
            let again = decode(&out).unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
            assert_eq!(again, msg, "decode(encode(m)) != m");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match decode_frame(data) {
        Ok(frame) => {
            let mut out = Vec::new();
            encode_frame(&frame, &mut out);
            let again = decode_frame(&out).unwrap_or_else(|e| panic!("re-encoded {frame:?} does not decode: {e}"));
            assert_eq!(again, frame, "decode_frame(encode_frame(f)) != f");
            if let Frame::XLogData { data: inner, .. } = frame {
                if let Err(e) = decode(inner) {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

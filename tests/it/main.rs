//! The integration tests, as one test binary.
//!
//! Why one binary: each file under `tests/` is its own crate, so with one
//! file per area every binary recompiled the shared test kit ([`support`]:
//! clusters, the PostgREST stand-in, the proxy, ~4k lines with axum) and
//! linked it again, and every binary had to silence the kit items it did not
//! use. Here the kit is compiled once and every item of it is used by some
//! module, so there is no blanket `allow(dead_code)`.
//!
//! One module per area (the former `tests/*.rs` files, same test names, now
//! prefixed by the module: `cargo test --test it up_path::`):
//!
//! - [`up_path`], [`down_path`]: the two sync directions against real
//!   clusters, crash points included;
//! - [`rest_mode`]: upstream through the PostgREST stand-in;
//! - [`service`]: `run` as a long-lived service (outages, restarts, alerts);
//! - [`durability`]: synchronous commits whatever the server says, and
//!   tables whose deletes could not be keyed (REPLICA IDENTITY) reported;
//! - [`recovery`]: replay, verify/repair, resync after a lost slot;
//! - [`bad_input`], [`catalogue`]: the bad-input catalogue;
//! - [`chaos`]: two clinics and the cloud app writing the same rows under
//!   faults, then no data lost and every row as the conflict rule allows;
//! - [`security`]: secrets, TLS, least privilege at runtime;
//! - [`storage`]: study files mirrored from and to Supabase Storage (its
//!   stand-in in `support::storage`): resumable, verified, never half;
//! - [`status_page`]: the page for people, rendered by headless Chromium;
//! - [`deploy_files`]: installers, unit file, role SQL, config snippets;
//! - [`upstream_apply`]: `centrovision_sync_apply()` (sql/upstream) case by
//!   case; [`conflict_rule`]: the multi-writer conflict rule line by line;
//! - [`multi_clinic`]: two clinics and one upstream, each everyday
//!   situation of many writers; [`branch_scope`]: clinics of different
//!   branches on one upstream, each holding only its branches' rows;
//! - [`type_round_trip`]: every type a clinic is likely to use, both ways
//!   in both modes, value for value, on a table whose columns are named
//!   like the aliases generated SQL uses;
//! - [`pgoutput_never_panics`]: property tests of the pgoutput codec;
//! - [`harness_smoke`], [`postgrest_standin`]: the test kit's own promises;
//! - [`bench_quick`]: the end-to-end benchmark's quick profile, so the
//!   harness under `benches/e2e/` cannot rot.
//!
//! Sharing one process: [`support::Cluster::shared`] is now one cluster for
//! the whole binary (one database per test, as before; tests that stop,
//! crash or reconfigure a cluster start their own with
//! [`support::Cluster::start`], as before). The default test thread count
//! (one per core) is the same as each former binary had, so no more tests
//! run at once than before; the one test that ran alone in its own binary
//! (the benchmark) still runs alone, through [`support::floor`].

mod support;

mod bad_input;
mod bench_quick;
mod branch_scope;
mod catalogue;
mod chaos;
mod conflict_rule;
mod deploy_files;
mod down_path;
mod durability;
mod harness_smoke;
mod multi_clinic;
mod pgoutput_never_panics;
mod postgrest_standin;
mod recovery;
mod rest_mode;
mod security;
mod service;
mod status_page;
mod storage;
mod type_round_trip;
mod up_path;
mod upstream_apply;
